//! `./x bench`: measurements, never test assertions. Each writes its table into
//! `docs/benchmarks.md` between markers, with the command that reproduces it.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    BenchCommand,
    run::{Tools, describe, release_bin},
};

/// A policy of `segments` segments (each a cgroup, an IPv4 /28, an IPv6 /64 and a
/// listener port) and `rules` rules between random segments on random ports and ranges.
/// Segment `s0` (198.18.0.0/28) appears in no generated rule: the XDP benchmark adds its
/// own rules from it.
fn generate(segments: u64, rules: u64) -> String {
    generate_flat(segments, rules).0
}

/// [`generate`]'s policy, and its rules flattened for the filters it is compared with:
/// one line per source CIDR, protocol and port range, `accept|drop CIDR tcp|udp LOW HIGH`
/// (the destination segment left out: every destination is the one host).
fn generate_flat(segments: u64, rules: u64) -> (String, String) {
    // Seeded, so every run benchmarks the same policies.
    let mut g = fastrand::Rng::with_seed(rules ^ (segments << 32));
    let mut text =
        String::from("[failsafe.ssh]\nfrom = [\"198.18.250.0/24\"]\nport = \"22/tcp\"\n");
    let cidr = |s: u64| {
        let (third, fourth) = (s / 16, (s % 16) * 16);
        format!("198.{}.{}.{fourth}/28", 18 + third / 256, third % 256)
    };
    for s in 0..segments {
        writeln!(
            text,
            "[segments.s{s}]\ncgroups = [\"system.slice/s{s}.service\"]\ncidrs = [\"{}\", \"2001:db8:{s:x}::/64\"]\nports = [\"{}/tcp\"]",
            cidr(s),
            10_000 + s
        )
        .expect("write to string");
    }
    let mut flat = String::new();
    for r in 0..rules {
        let action = if g.u64(..10) == 0 { "deny" } else { "allow" };
        let from = g.u64(1..segments);
        let to = g.u64(1..segments);
        let port = 1 + g.u64(..60_000);
        let (ports, entries) = match g.u64(..3) {
            0 => (format!("\"{port}/tcp\""), vec![("tcp", port, port)]),
            1 => {
                let (high, udp) = (port + g.u64(..200), 1 + g.u64(..60_000));
                (
                    format!("\"{port}-{high}/tcp\", \"{udp}/udp\""),
                    vec![("tcp", port, high), ("udp", udp, udp)],
                )
            }
            _ => (format!("\"{port}/udp\""), vec![("udp", port, port)]),
        };
        writeln!(
            text,
            "[[{action}]]\nid = \"r{r}\"\nfrom = [\"s{from}\"]\nto = [\"s{to}\"]\nports = [{ports}]"
        )
        .expect("write to string");
        let verdict = if action == "deny" { "drop" } else { "accept" };
        for (proto, low, high) in entries {
            writeln!(flat, "{verdict} {} {proto} {low} {high}", cidr(from))
                .expect("write to string");
        }
    }
    (text, flat)
}

/// Runs `command`, returning its wall time in milliseconds and its peak RSS in MiB.
fn measure(command: &mut Command) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    let child = command
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(command)))?;
    let pid = i32::try_from(child.id()).expect("pid fits in i32");
    let mut wait_status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both out-pointers are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut wait_status, 0, &mut usage) };
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    if rc != pid || !libc::WIFEXITED(wait_status) || libc::WEXITSTATUS(wait_status) != 0 {
        bail!("`{}` failed (wait status {wait_status})", describe(command));
    }
    // ru_maxrss is in KiB on Linux.
    Ok((elapsed, usage.ru_maxrss as f64 / 1024.0))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs a benchmark binary with `args`; returns its stdout, or fails with its stderr.
fn run_bench(bench: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let output = Command::new(bench)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", bench.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            bench.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The numbers after `NAME` on the line of a benchmark binary's output that starts with it.
fn field(stdout: &str, name: &str) -> anyhow::Result<Vec<f64>> {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .with_context(|| format!("no {name} in {stdout:?}"))?;
    line.split_whitespace()
        .skip(1)
        .map(|v| v.parse::<f64>().map_err(anyhow::Error::from))
        .collect()
}

/// Replaces the block between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in
/// docs/benchmarks.md (appending it if absent).
fn write_section(root: &Path, name: &str, body: &str) -> anyhow::Result<PathBuf> {
    let path = root.join("docs").join("benchmarks.md");
    let existing = fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nMeasured by `./x bench`; figures, not assertions.\n\n".to_owned()
    });
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let block = format!("{begin}\n{body}{end}");
    let updated = match (existing.find(&begin), existing.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &existing[..b], &existing[e + end.len()..])
        }
        _ => format!("{}\n{block}\n", existing.trim_end()),
    };
    fs::create_dir_all(path.parent().expect("docs"))?;
    fs::write(&path, updated)?;
    Ok(path)
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, kernel {}", kernel.trim())
}

/// Policy compile time and peak memory at 1k, 10k and 100k rules over 1k segments.
pub fn policy(tools: &Tools) -> anyhow::Result<()> {
    let enforcer = release_bin(tools, "enforcer", "enforcer")?;
    let dir = tools.root.join("target/bench/policies");
    fs::create_dir_all(&dir)?;
    let mut table = String::from(
        "| rules | segments | rule-trie entries | wall time (median of 5) | peak RSS |\n|---:|---:|---:|---:|---:|\n",
    );
    for rules in [1_000u64, 10_000, 100_000] {
        let file = dir.join(format!("policy-{rules}.toml"));
        fs::write(&file, generate(1_000, rules))?;
        let mut times = Vec::new();
        let mut peaks = Vec::new();
        for _ in 0..5 {
            let (ms, mib) = measure(
                Command::new(&enforcer)
                    .args(["policy", "check", "--json"])
                    .arg(&file),
            )?;
            times.push(ms);
            peaks.push(mib);
        }
        let report = Command::new(&enforcer)
            .args(["policy", "check", "--json"])
            .arg(&file)
            .output()?;
        let report: serde_json::Value = serde_json::from_slice(&report.stdout)
            .context("`enforcer policy check --json` printed no JSON")?;
        let entries = report["maps"]
            .as_array()
            .and_then(|maps| maps.iter().find(|m| m["map"] == "rules"))
            .and_then(|rules| rules["entries"].as_u64())
            .context("the check report has no rule map fill")?;
        let (time, peak) = (median(times), peaks.into_iter().fold(0.0, f64::max));
        println!(
            "policy bench: {rules} rules: {time:.0} ms, peak {peak:.1} MiB, {entries} rule entries"
        );
        writeln!(
            table,
            "| {rules} | 1000 | {entries} | {time:.0} ms | {peak:.1} MiB |"
        )?;
    }
    let body = format!(
        "## Policy compile\n\n`enforcer policy check --json` on generated policies (1k segments, each with a cgroup, an IPv4 /28, an IPv6 /64 and a listener port; rules between random segments, 10% deny, single ports, ranges and UDP). The time covers the whole pipeline: read, parse, validate, shadowing analysis, compile, image hash and JSON summary. Machine: {}.\n\nReproduce: `./x bench policy`\n\n{table}\n",
        machine()
    );
    let path = write_section(&tools.root, "policy-compile", &body)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The rules the XDP benchmark's probe packets hit (see `enforcer-bench-xdp`).
const XDP_PROBE_RULES: &str = r#"
[[allow]]
id = "bench-allow"
from = ["s0"]
to = ["s1"]
ports = ["10001/tcp"]

[[deny]]
id = "bench-deny"
from = ["s0"]
to = ["s2"]
ports = ["10002/tcp"]
"#;

/// The action each probe packet must get, so a figure is never reported for a packet
/// that took another path (1 drop, 2 pass).
const XDP_EXPECTED: [(&str, u32); 5] = [
    ("empty", 2),
    ("allow", 2),
    ("deny", 1),
    ("no-match", 1),
    ("established", 2),
];

/// When a part of the deny path runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PartRuns {
    /// On every denied packet, repeats answered from the verdict cache included.
    Always,
    /// Only when the verdict cache does not hold the flow: a source's first packet to a
    /// port (and the first after its entry was replaced or its generation ended).
    FirstPacket,
    /// Once per fold window.
    Window,
}

/// The parts of the deny path `enforcer-bench-xdp` times (`part NAME OPERATIONS NS`
/// lines), with what each is and when it runs.
const XDP_PARTS: [(&str, &str, PartRuns); 10] = [
    (
        "listen",
        "declared listener: hash lookup (4-byte key, hit)",
        PartRuns::FirstPacket,
    ),
    (
        "cidr",
        "source segment: LPM-trie lookup in the IPv4 CIDR trie (hit)",
        PartRuns::FirstPacket,
    ),
    (
        "failsafe",
        "LPM-trie lookup in the failsafe trie (12-byte key, miss)",
        PartRuns::FirstPacket,
    ),
    (
        "rules",
        "rule trie: LPM-trie lookups (16-byte key), those the policy has rules for",
        PartRuns::FirstPacket,
    ),
    (
        "arrays",
        "array lookups: active generation, policy config ×2, segment flags ×2, host settings",
        PartRuns::Always,
    ),
    (
        "counters",
        "per-CPU counter adds: by reason, the rule's, suppressed events",
        PartRuns::Always,
    ),
    ("clock", "`bpf_ktime_get_boot_ns`", PartRuns::Always),
    (
        "event",
        "the event made field by field in per-CPU scratch (120 bytes)",
        PartRuns::Always,
    ),
    (
        "fold",
        "hash lookup of the source's fold (64-byte key, hit) and atomic add",
        PartRuns::Always,
    ),
    (
        "ring",
        "ring buffer write of one event (`bpf_ringbuf_output`, 120 bytes)",
        PartRuns::Window,
    ),
];

/// Packets per `BPF_PROG_TEST_RUN` call, and calls per figure (the median is reported).
const XDP_REPEAT: u32 = 1_000_000;
const XDP_RUNS: usize = 5;

/// Per-packet cost of the XDP program at 10, 1k, 10k and 100k rules, next to an empty
/// XDP program measured in the same run.
pub fn xdp(tools: &Tools) -> anyhow::Result<()> {
    let bench = release_bin(tools, "enforcer-tests", "enforcer-bench-xdp")?;
    let dir = tools.root.join("target/bench/policies");
    fs::create_dir_all(&dir)?;
    let sizes = [10u64, 1_000, 10_000, 100_000];
    let load_before = load_average();
    // ns per packet, by size, in XDP_EXPECTED order.
    let mut figures: Vec<Vec<f64>> = Vec::new();
    // ns above the empty program per part, by size, in XDP_PARTS order.
    let mut parts: Vec<Vec<(f64, f64)>> = Vec::new();
    for rules in sizes {
        let file = dir.join(format!("xdp-{rules}.toml"));
        // 1k segments at every size, so only the number of rules changes.
        let mut text = generate(1_000, rules - 2);
        text.push_str(XDP_PROBE_RULES);
        fs::write(&file, text)?;
        let stdout = run_bench(
            &bench,
            &[
                file.as_os_str(),
                XDP_REPEAT.to_string().as_ref(),
                XDP_RUNS.to_string().as_ref(),
            ],
        )?;
        let mut row = Vec::new();
        for (line, (label, expected)) in stdout.lines().zip(XDP_EXPECTED) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [got, action, ns] = fields.as_slice() else {
                bail!("unexpected line {line:?}");
            };
            if *got != label || action.parse::<u32>()? != expected {
                bail!("{rules} rules: expected {label} with action {expected}, got {line:?}");
            }
            row.push(ns.parse::<f64>()?);
        }
        if row.len() != XDP_EXPECTED.len() {
            bail!("{rules} rules: incomplete output {stdout:?}");
        }
        println!(
            "xdp bench: {rules} rules: {row:?} ns (empty, allow, deny, no-match, established)"
        );
        parts.push(xdp_parts(&stdout, row[0])?);
        figures.push(row);
    }

    let mut table = String::from(
        "| rules | empty program | allow | deny | no match | established | deny / empty |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (rules, row) in sizes.iter().zip(&figures) {
        writeln!(
            table,
            "| {rules} | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns | {:.1}× |",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[2] / row[0]
        )?;
    }
    let (first, last) = (&figures[0], &figures[figures.len() - 1]);
    let growth = |i: usize| last[i] / first[i];
    let breakdown = xdp_breakdown(&sizes, &figures, &parts)?;
    let largest = xdp_largest(
        sizes[sizes.len() - 1],
        &figures[figures.len() - 1],
        &parts[parts.len() - 1],
    );
    let body = format!(
        "## XDP per-packet cost\n\nThe XDP program run by `BPF_PROG_TEST_RUN` on one IPv4 TCP packet, {XDP_REPEAT} repetitions per call, median of {XDP_RUNS} calls, next to an empty XDP program (`r0 = XDP_PASS; exit`) measured in the same run. Policies: 1k segments and the given number of rules (generated as for the compile benchmark, plus the probe rules). `allow` and `deny` are SYNs a rule decides, `no match` a SYN no rule covers (default deny, every lookup misses), `established` an ACK (parsed, not decided). Each figure repeats one packet: a SYN is decided in full once, then answered from XDP's verdict cache (per CPU, by source, port, protocol and generation; `docs/datapath.md`), so these are the costs for a source that keeps sending to one port. A source's first packet also pays the lookups the cache saves (the last row of the table below); the filters benchmark below, whose every SYN comes from a new source, measures that path end to end. Every decision also counts and goes through the event de-duplication, as in production. Machine: {}.\n\nReproduce: `./x bench xdp` (as root)\n\n{table}\nGrowth from 10 to 100k rules: allow {:.2}×, deny {:.2}×, no match {:.2}×, established {:.2}×.\n\nWhere the time goes, part by part: each part below is a program of a few instructions (assembled in the benchmark, loaded with `bpf()`) that makes only that part's operations of the deny path, on the real program's own maps (the active generation's, found through the loaded program's map ids, so the tries hold the same entries) with the keys the deny probe makes; its figure is its time minus the empty program's in the same run. The parse is `established` minus the empty program (an ACK is parsed like a SYN, then passed). The ring buffer write is not on the repeated deny path: a denied source is folded (counted in its fold, one event per source per window), so only a fold's first attempt and its reports write to the ring.\n\n{breakdown}\n{largest}\n\nReading it: a repeated denial costs the parse, the verdict cache's lookup, the counters, the clock read and the fold. The two largest are the audit trail's and run for every denied packet: the fold's hash lookup (a 64-byte key hashed and compared; each attempt is counted into its source's fold) and the clock read that dates the attempt (`bpf_ktime_get_boot_ns`, a helper call that reads the clock source, the TSC here). The lookups that decide (the source CIDR trie, the rule trie, the only part that grows with the policy, the declared listener's hash and the failsafe trie) run only for a source's first packet to a port. Array lookups and per-CPU counters are inlined by the verifier into a few instructions and cost almost nothing. The rest is the program's own instructions between the parts: the cache's index hash and key comparison, the 64-byte fold key and the 120-byte event built in per-CPU scratch, the call into the fold subprogram, and whatever the parts cost more together than alone (each part's program runs with only its own data in the caches). The empty program is the `BPF_PROG_TEST_RUN` floor, so the ratio to it is large: at {} rules the repeated deny path is {:.1}× the empty program (target 5×: {}). Figures move by up to a third between runs on this machine; compare within one table.\n\n",
        shared_machine(&load_before),
        growth(1),
        growth(2),
        growth(3),
        growth(4),
        sizes[sizes.len() - 1],
        last[2] / last[0],
        if last[2] / last[0] <= 5.0 {
            "met"
        } else {
            "missed"
        },
    );
    let path = write_section(&tools.root, "xdp-packet", &body)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Each [`XDP_PARTS`] part's operation count and time above the empty program (`empty`
/// ns), from `enforcer-bench-xdp` output.
fn xdp_parts(stdout: &str, empty: f64) -> anyhow::Result<Vec<(f64, f64)>> {
    XDP_PARTS
        .iter()
        .map(|(name, _, _)| {
            let line = stdout
                .lines()
                .find(|l| l.split_whitespace().take(2).eq(["part", *name]))
                .with_context(|| format!("no part {name} in {stdout:?}"))?;
            let numbers: Vec<f64> = line
                .split_whitespace()
                .skip(2)
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            let [operations, ns] = numbers[..] else {
                bail!("unexpected line {line:?}");
            };
            Ok((operations, ns - empty))
        })
        .collect()
}

/// The table of the deny path's parts by policy size, with the parse, their sum and what
/// the real deny path costs above the empty program.
fn xdp_breakdown(
    sizes: &[u64],
    figures: &[Vec<f64>],
    parts: &[Vec<(f64, f64)>],
) -> anyhow::Result<String> {
    let mut table = String::from("| part of the deny path | operations |");
    for rules in sizes {
        write!(table, " {rules} rules |")?;
    }
    table.push_str("\n|---|---:|");
    table.push_str(&"---:|".repeat(sizes.len()));
    table.push('\n');
    let row =
        |table: &mut String, label: &str, ops: &str, values: &mut dyn Iterator<Item = f64>| {
            let cells: String = values.map(|ns| format!(" {ns:.0} ns |")).collect();
            writeln!(table, "| {label} | {ops} |{cells}")
        };
    // established - empty: the parse and the program's entry.
    row(
        &mut table,
        "parse (`established` minus empty)",
        "",
        &mut figures.iter().map(|f| f[4] - f[0]),
    )?;
    for (i, (name, what, runs)) in XDP_PARTS.iter().enumerate() {
        let when = match runs {
            PartRuns::Always => "",
            PartRuns::FirstPacket => " (a source's first packet only, not in the sum)",
            PartRuns::Window => " (once per fold window, not in the sum)",
        };
        row(
            &mut table,
            &format!("`{name}`: {what}{when}"),
            &format!("{:.0}", parts[0][i].0),
            &mut parts.iter().map(|p| p[i].1),
        )?;
    }
    let sums: Vec<f64> = figures
        .iter()
        .zip(parts)
        .map(|(f, p)| f[4] - f[0] + sum_of(p, PartRuns::Always))
        .collect();
    row(
        &mut table,
        "**sum of the parts on every packet**",
        "",
        &mut sums.iter().copied(),
    )?;
    row(
        &mut table,
        "**repeated deny path** (`deny` minus empty)",
        "",
        &mut figures.iter().map(|f| f[2] - f[0]),
    )?;
    row(
        &mut table,
        "rest: the verdict cache's lookup, branches, key building, copies between the parts",
        "",
        &mut figures.iter().zip(&sums).map(|(f, sum)| f[2] - f[0] - sum),
    )?;
    row(
        &mut table,
        "a source's first packet adds the lookups the cache saves (sum of those parts)",
        "",
        &mut parts.iter().map(|p| sum_of(p, PartRuns::FirstPacket)),
    )?;
    Ok(table)
}

/// The sum of the parts of `parts` (in [`XDP_PARTS`] order) that run `when`.
fn sum_of(parts: &[(f64, f64)], when: PartRuns) -> f64 {
    XDP_PARTS
        .iter()
        .zip(parts)
        .filter(|((_, _, runs), _)| *runs == when)
        .map(|(_, (_, ns))| ns)
        .sum()
}

/// A sentence naming the three costliest parts on the repeated deny path at `rules`
/// rules and their share of it.
fn xdp_largest(rules: u64, figures: &[f64], parts: &[(f64, f64)]) -> String {
    let deny = figures[2] - figures[0];
    let mut on_path: Vec<(&str, f64)> = XDP_PARTS
        .iter()
        .zip(parts)
        .filter(|((_, _, runs), _)| *runs == PartRuns::Always)
        .map(|((name, _, _), (_, ns))| (*name, *ns))
        .collect();
    on_path.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top = &on_path[..3];
    let names: Vec<String> = top
        .iter()
        .map(|(name, ns)| format!("`{name}` ({ns:.0} ns)"))
        .collect();
    let share = top.iter().map(|(_, ns)| ns).sum::<f64>() / deny * 100.0;
    format!(
        "At {rules} rules the three costliest parts of the repeated deny path are {}: {share:.0}% of it.",
        names.join(", ")
    )
}

/// Policy writes measured per size at most, and the time each size may take for them
/// (the writes stop at whichever comes first): (rules, writes, seconds).
const RELOAD_RUNS: [(u64, usize, u64); 2] = [(1_000, 300, 60), (100_000, 100, 240)];
/// Reload targets, p99 in ms, by rules.
const RELOAD_TARGETS: [(u64, f64); 2] = [(1_000, 50.0), (100_000, 1_000.0)];

/// Time from a policy file write to enforcement (p50, p99) and the agent's resident
/// memory idle and under connections, at 1k and 100k rules over 1k segments.
pub fn agent(tools: &Tools) -> anyhow::Result<()> {
    // The reload bench runs the agent and the probe from its own directory.
    release_bin(tools, "enforcer", "enforcer")?;
    release_bin(tools, "enforcer-tests", "enforcer-probe")?;
    let bench = release_bin(tools, "enforcer-tests", "enforcer-bench-reload")?;
    let dir = tools.root.join("target/bench/policies");
    fs::create_dir_all(&dir)?;
    let mut table = String::from(
        "| rules | writes | write to enforcement p50 | p99 | max | p99 target | before the apply, p50 / p99 | filling the maps, p50 / p99 | new cgroup resolved p50 / p99 | agent RSS idle (anonymous) | agent RSS under connections (anonymous) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let load_before = load_average();
    for (rules, iterations, seconds) in RELOAD_RUNS {
        // Two policies that differ by one rule: every write makes a new generation.
        let a = generate(1_000, rules);
        let b = format!(
            "{a}[[allow]]\nid = \"bench-extra\"\nfrom = [\"s1\"]\nto = [\"s2\"]\nports = [\"9/tcp\"]\n"
        );
        let (path_a, path_b) = (
            dir.join(format!("agent-{rules}-a.toml")),
            dir.join(format!("agent-{rules}-b.toml")),
        );
        fs::write(&path_a, a)?;
        fs::write(&path_b, b)?;
        let stdout = run_bench(
            &bench,
            &[
                path_a.as_os_str(),
                path_b.as_os_str(),
                iterations.to_string().as_ref(),
                seconds.to_string().as_ref(),
            ],
        )?;
        let field = |name: &str| field(&stdout, name);
        let writes = field("reloads")?[0];
        let target = RELOAD_TARGETS
            .iter()
            .find(|(size, _)| *size == rules)
            .map_or(f64::NAN, |(_, ms)| *ms);
        let reload = field("reload_ms")?;
        let before_apply = field("before_apply_ms")?;
        let fill = field("fill_ms")?;
        let cgroup = field("cgroup_ms")?;
        let (idle, load) = (field("rss_idle_kib")?, field("rss_load_kib")?);
        println!(
            "agent bench: {rules} rules: reload {reload:?} ms, new cgroup {cgroup:?} ms, \
             RSS (VmRSS, RssAnon) {idle:?} / {load:?} KiB"
        );
        writeln!(
            table,
            "| {rules} | {writes:.0} | {:.0} ms | {:.0} ms | {:.0} ms | {target:.0} ms ({}) | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {:.1} / {:.1} ms | {:.1} MiB ({:.1}) | {:.1} MiB ({:.1}) |",
            reload[0],
            reload[1],
            reload[2],
            if reload[1] <= target { "met" } else { "missed" },
            before_apply[0],
            before_apply[1],
            fill[0],
            fill[1],
            cgroup[0],
            cgroup[1],
            idle[0] / 1024.0,
            idle[1] / 1024.0,
            load[0] / 1024.0,
            load[1] / 1024.0
        )?;
    }
    let body = format!(
        "## Agent: policy write to enforcement, memory\n\nThe real agent binary (release build) attached to a test cgroup, watching one policy file. Each write replaces the file with a policy differing by one rule, once the agent has finished the previous reload (the agent's log says so); the time runs from just before the write until the pinned `ACTIVE` map shows the new generation (the moment the kernel enforces it): inotify, a settle window ({settle} ms of quiet once the writer has closed the file), parse, validate, compile, fill the inactive generation's maps, flip (the old generation is cleared after the flip, outside the time). The time is split per write from the agent's own log: it logs each apply's duration (clear the inactive generation's maps, fill them, flip, wait {grace} ms, read the old generation's rule counters, clear its maps; the diff against the generation before, for the history record, runs on a thread beside all that); the benchmark times from the flip until that log line, so \"filling the maps\" is the apply's time less that (everything up to the flip), and \"before the apply\" the rest of the write-to-enforcement time: inotify, the settle window, reading, parsing, validating and compiling the policy (on a blocking thread), and, writes coming back to back, whatever of the previous reload still runs after its log line (writing the history record and the generations' names). Writes at 1k rules: up to {} or {} s, at 100k up to {} or {} s, whichever comes first (the table says how many were made; p99 is the value below which 99% of them fall); policies of 1k segments generated as for the compile benchmark. \"New cgroup resolved\" runs from creating a cgroup under the cgroup2 root (a guard: the policy's cgroups are below it) until the agent has written it into the active cgroup table, 40 times with the agent idle: the window in which that cgroup's processes are unclassified (denied). The agent does one thing at a time, so a cgroup created during a reload waits for the reload to end (at 100k rules, seconds); the 100k p99 is the first sample, taken as soon as the agent logs the last reload, which still waits for that reload's bookkeeping (the rule names handed to the audit thread and written for `status`, about 80 ms at 100k rules; the compiled policy is freed on a thread of its own). RSS is `VmRSS` after start and its peak while a client in the attached cgroup makes 3000 loopback connections (allowed by a rule both policies carry for it; duplicate suppression off, so each is an audit record the consumer writes); in parentheses `RssAnon`, the agent's own heap and stacks. The rest is mapped, not allocated by the agent: its binary, and the 16 MiB audit ring, which the kernel maps into the reader with the data pages twice so that a record wrapping around the end reads as one run (32 MiB of `VmRSS` for 16 MiB of kernel memory; `/proc/PID/smaps` shows it as `anon_inode:bpf-map`). Targets: p99 at most 50 ms at 1k rules, at most 1 s at 100k. Machine: {}.\n\nReproduce: `./x bench agent` (as root)\n\n{table}\n",
        RELOAD_RUNS[0].1,
        RELOAD_RUNS[0].2,
        RELOAD_RUNS[1].1,
        RELOAD_RUNS[1].2,
        shared_machine(&load_before),
        settle = 3,
        grace = 20,
    );
    let path = write_section(&tools.root, "agent-reload", &body)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Records in the store the query benchmark reads.
const QUERY_RECORDS: u64 = 10_000_000;

/// Audit events per second from the kernel to the store, single-event latency, and
/// How often the sealed pipeline runs seal, in milliseconds.
const SEAL_EVERY_MS: &str = "1000";

/// What one `enforcer-bench-audit pipeline` run printed.
struct PipelineRun {
    events: f64,
    /// CPU seconds the consumer's thread used while the events were stored.
    consumer_cpu: f64,
    stored: f64,
    lost: f64,
    seconds: f64,
    ring: f64,
    latency: Vec<f64>,
    seals: f64,
}

/// Runs the kernel-to-store pipeline for 10 s with its store in `dir`, sealing every
/// `seal` milliseconds when given.
fn pipeline_run(bench: &Path, dir: &Path, seal: Option<&str>) -> anyhow::Result<PipelineRun> {
    let pins =
        Path::new("/sys/fs/bpf").join(format!("enforcer-bench-audit-{}", std::process::id()));
    let mut args = vec![
        "pipeline".as_ref(),
        pins.as_os_str(),
        dir.as_os_str(),
        "10".as_ref(),
    ];
    args.extend(seal.map(std::ffi::OsStr::new));
    let stdout = run_bench(bench, &args)?;
    let field = |name: &str| field(&stdout, name);
    let run = PipelineRun {
        events: field("events")?[0],
        consumer_cpu: field("consumer_cpu_s")?[0],
        stored: field("stored")?[0],
        lost: field("lost")?[0],
        seconds: field("seconds")?[0],
        ring: field("ring_bytes")?[0],
        latency: field("latency_us")?,
        seals: if seal.is_some() {
            field("seals")?[0]
        } else {
            0.0
        },
    };
    // Each run's store goes before the next, so the disk holds one at a time.
    let _ = fs::remove_dir_all(dir);
    Ok(run)
}

/// `audit query` / `audit verify` over a store of [`QUERY_RECORDS`] records.
pub fn audit(tools: &Tools) -> anyhow::Result<()> {
    let enforcer = release_bin(tools, "enforcer", "enforcer")?;
    let bench = release_bin(tools, "enforcer-tests", "enforcer-bench-audit")?;
    let work = tools.root.join("target/bench/audit");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    // Sealing off and on (every second, 900 times the default rate), alternating, so
    // the machine's drift between runs falls on both.
    let mut runs = Vec::new();
    for (round, seal) in [None, Some(SEAL_EVERY_MS), None, Some(SEAL_EVERY_MS)]
        .into_iter()
        .enumerate()
    {
        let run = pipeline_run(&bench, &work.join(format!("pipeline-{round}")), seal)?;
        println!(
            "audit bench: sealing {}: {} of {} stored in {} s, {} lost, {} seals; latency {:?} us",
            if seal.is_some() { "on" } else { "off" },
            run.stored,
            run.events,
            run.seconds,
            run.lost,
            run.seals,
            run.latency
        );
        runs.push((seal.is_some(), run));
    }
    let rate = |sealed: bool| {
        let rates: Vec<f64> = runs
            .iter()
            .filter(|(s, _)| *s == sealed)
            .map(|(_, run)| run.stored / run.seconds)
            .collect();
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    let (unsealed_rate, sealed_rate) = (rate(false), rate(true));
    let PipelineRun {
        events,
        stored,
        lost,
        seconds,
        ring,
        consumer_cpu,
        ref latency,
        ..
    } = runs[0].1;

    let store = work.join("query");
    let started = Instant::now();
    run_bench(
        &bench,
        &[
            "generate".as_ref(),
            store.as_os_str(),
            QUERY_RECORDS.to_string().as_ref(),
        ],
    )?;
    let generate_s = started.elapsed().as_secs_f64();
    let size: u64 = fs::read_dir(&store)?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let mut timings = Vec::new();
    for (label, args) in [
        (
            "`audit query --rule r500` (full scan, ~9k matches)",
            vec!["query", "--json", "--rule", "r500"],
        ),
        (
            "`audit query --since 1h` (the newest hour, ~360k records; older files skipped by their seals)",
            vec!["query", "--json", "--since", "1h"],
        ),
        ("`audit stats` (full scan)", vec!["stats", "--json"]),
        ("`audit verify` (every hash)", vec!["verify"]),
        (
            "`audit export --format parquet` (every record)",
            vec!["export", "--format", "parquet", "--force", "-o"],
        ),
    ] {
        let mut command = Command::new(&enforcer);
        command.arg("audit").args(&args);
        match args[0] {
            "verify" => command.arg(&store),
            "export" => command
                .arg(work.join("export.parquet"))
                .arg("--dir")
                .arg(&store),
            _ => command.arg("--dir").arg(&store),
        };
        let (ms, rss) = measure(&mut command)?;
        println!("audit bench: {label}: {ms:.0} ms, {rss:.0} MiB");
        timings.push((label, ms, rss));
    }
    let _ = fs::remove_dir_all(&work);

    let mut table = format!(
        "| figure | value |\n|---|---:|\n| events generated (XDP `BPF_PROG_TEST_RUN`, one decision each) | {events:.0} |\n| records stored | {stored:.0} |\n| lost (kernel ring full, in gap records) | {lost:.0} |\n| sustained rate, kernel to store | {:.0} events/s |\n| the consumer's CPU per event (its thread's CPU time over the events it stored) | {:.2} us: one core sustains {:.0} events/s |\n| ring size | {} MiB (about {:.0} events) |\n| event to store latency p50 / p99 / max | {:.0} / {:.0} / {:.0} us |\n",
        stored / seconds,
        consumer_cpu / stored * 1e6,
        stored / consumer_cpu,
        ring / 1_048_576.0,
        ring / 120.0,
        latency[0],
        latency[1],
        latency[2],
    );
    writeln!(
        table,
        "\n| forward-secure sealing (a seal every {SEAL_EVERY_MS} ms; the default is every 15 min) | kernel to store |\n|---|---:|"
    )?;
    for (sealed, run) in &runs {
        writeln!(
            table,
            "| sealing {}{} | {:.0} events/s |",
            if *sealed { "on" } else { "off" },
            if *sealed {
                format!(", {:.0} seals", run.seals)
            } else {
                String::new()
            },
            run.stored / run.seconds
        )?;
    }
    writeln!(
        table,
        "| cost of sealing (mean of the two runs each way) | {:+.1}% |",
        (unsealed_rate - sealed_rate) / unsealed_rate * 100.0
    )?;
    writeln!(
        table,
        "\n| over {QUERY_RECORDS} records ({:.2} GiB: {:.1} bytes per stored flow; written in {generate_s:.0} s) | time | peak RSS |\n|---|---:|---:|",
        size as f64 / f64::from(1u32 << 30),
        size as f64 / QUERY_RECORDS as f64,
    )?;
    for (label, ms, rss) in timings {
        writeln!(table, "| {label} | {:.1} s | {rss:.0} MiB |", ms / 1000.0)?;
    }
    let body = format!(
        "## Audit: kernel to store, latency, queries\n\nThe kernel programs loaded (pinned, unattached) with a one-rule policy and duplicate suppression off; the agent's own consumer and store (release build, fsync every second) on a thread. The XDP program runs through `BPF_PROG_TEST_RUN` on a TCP SYN the policy denies (XDP records denials; an allowed flow is recorded by the socket that receives it) in chunks of 10k, each run a real decision and ring event, kept at most 100k events ahead of the store, for 10 s; the rate is records stored per second (the first run without sealing; then the same with forward-secure sealing off and on, alternating, two runs each). Latency: 2000 single events 1 ms apart, from the kernel run to the consumer's `write()` returning (the store syncs every second). Queries run the release `enforcer audit` on a generated store (compact files: its size per flow includes every file's open and seal records). Targets: at least 1,000,000 events/s, sealing on, zero loss; p99 event to store at most 50 ms; at most 100 bytes per stored flow; over 10M records `query --rule` at most 2 s, `stats` 5 s, `verify` 10 s, `export --format parquet` 30 s. Machine: {}.\n\nReproduce: `./x bench audit` (as root; needs about 2 GiB of disk for a while)\n\n{table}\n",
        machine(),
    );
    let path = write_section(&tools.root, "audit", &body)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Rounds of the per-socket benchmark, each measuring both sets of servers.
const SOCKET_ROUNDS: usize = 7;
/// Seconds of streaming per round and set.
const SOCKET_STREAM_SECONDS: f64 = 3.0;
/// UDP request/response exchanges per round and set.
const SOCKET_EXCHANGES: usize = 20_000;
/// Loopback connections per round and set: 1e5 per set over the rounds.
const SOCKET_CONNECTS: usize = 100_000 / SOCKET_ROUNDS;

/// TCP stream throughput and UDP request/response latency to servers with and without
/// the cgroup hooks (the per-socket ingress layer), measured in one run.
pub fn socket(tools: &Tools) -> anyhow::Result<()> {
    release_bin(tools, "enforcer-tests", "enforcer-probe")?;
    let bench = release_bin(tools, "enforcer-tests", "enforcer-bench-socket")?;
    let stdout = run_bench(
        &bench,
        &[
            SOCKET_ROUNDS.to_string().as_ref(),
            SOCKET_STREAM_SECONDS.to_string().as_ref(),
            SOCKET_EXCHANGES.to_string().as_ref(),
            SOCKET_CONNECTS.to_string().as_ref(),
        ],
    )?;
    let figure = |name: &str, with: bool| -> anyhow::Result<f64> {
        let label = if with { "with" } else { "without" };
        let line = stdout
            .lines()
            .find(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(name) && words.next() == Some(label)
            })
            .with_context(|| format!("no {name} {label} in {stdout:?}"))?;
        Ok(line
            .split_whitespace()
            .nth(2)
            .unwrap_or("")
            .parse::<f64>()?)
    };
    let mut table = String::from(
        "| figure | without the hooks | with the hooks | change |\n|---|---:|---:|---:|\n",
    );
    for (name, what, unit) in [
        ("tcp-gbps", "TCP stream throughput", "Gbit/s"),
        ("udp-p50-us", "UDP request/response p50", "µs"),
        ("udp-p99-us", "UDP request/response p99", "µs"),
        ("connect-p50-us", "loopback `connect()` p50", "µs"),
        ("connect-p99-us", "loopback `connect()` p99", "µs"),
    ] {
        let (without, with) = (figure(name, false)?, figure(name, true)?);
        println!("socket bench: {what}: {without:.2} without, {with:.2} with ({unit})");
        writeln!(
            table,
            "| {what} | {without:.2} {unit} | {with:.2} {unit} | {:+.1}% |",
            (with / without - 1.0) * 100.0
        )?;
    }
    let body = format!(
        "## Per-socket ingress layer\n\nA veth pair to a remote namespace; two identical sets of servers on this host's end, one in a cgroup with every cgroup hook attached (the per-socket ingress layer `skb_ingress`, `skb_egress` and the socket hooks) as a segment the remote may reach, one in a cgroup without them. Clients in the remote namespace, ungoverned, so only the servers' side pays. {SOCKET_ROUNDS} rounds, each measuring both sets in alternating order; medians over the rounds. TCP: one connection writing 128 KiB buffers for {SOCKET_STREAM_SECONDS} s to a server that reads it to its end (the established path: one socket-state check per packet; on each ACK the source-route check and, as it leaves through the veth, one `LOCAL_ADDRESSES` lookup). UDP: {SOCKET_EXCHANGES} sequential exchanges with an echo server from an unconnected client socket (the server's unconnected socket: one peer lookup per datagram at ingress, one at the answer's `sendmsg()`). Connect: {SOCKET_CONNECTS} blocking loopback `connect()`s per round and set from a client in the set's cgroup to a server that accepts and closes, each connection closed with a reset ({} per set over the run; the governed client's `connect()` is decided by `connect4`, its SYN passes `skb_egress` and meets the listener's `skb_ingress`, which finds the sending socket with a socket lookup and decides the SYN again against its segment). Machine: {}.\n\nReproduce: `./x bench socket` (as root)\n\n{table}\nTargets: at most 3% throughput loss, at most 5% added p50 latency (UDP request/response and `connect()`). Veth throughput on two cores moves by several percent between rounds; the alternation and the medians are there to keep that out of the comparison.\n\n",
        SOCKET_CONNECTS * SOCKET_ROUNDS,
        machine(),
    );
    let path = write_section(&tools.root, "socket-layer", &body)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Rounds of the connect benchmark; connections per round and setup (1e5 per setup over
/// the run); the nftables rule counts compared.
const CONNECT_ROUNDS: usize = 10;
const CONNECT_PER_ROUND: usize = 100_000 / CONNECT_ROUNDS;
const CONNECT_NFT_RULES: [usize; 2] = [10, 1_000];

/// The machine, said to be shared, with the load average before the run (`before`) and
/// now.
fn shared_machine(before: &str) -> String {
    format!(
        "{}, shared with other builds and tests (load average {before} before, {} after)",
        machine(),
        load_average()
    )
}

/// Loopback `connect()` p50/p99 with no filter, the enforcer's cgroup hooks, and
/// nftables rules matching the client's cgroup, in one run.
pub fn connect(tools: &Tools) -> anyhow::Result<()> {
    release_bin(tools, "enforcer-tests", "enforcer-probe")?;
    let bench = release_bin(tools, "enforcer-tests", "enforcer-bench-connect")?;
    let load_before = load_average();
    let mut args = vec![CONNECT_ROUNDS.to_string(), CONNECT_PER_ROUND.to_string()];
    args.extend(CONNECT_NFT_RULES.map(|n| n.to_string()));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(AsRef::as_ref).collect();
    let stdout = run_bench(&bench, &args)?;
    let machine = shared_machine(&load_before);
    let figure = |name: &str, setup: &str| -> anyhow::Result<f64> {
        let line = stdout
            .lines()
            .find(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(name) && words.next() == Some(setup)
            })
            .with_context(|| format!("no {name} {setup} in {stdout:?}"))?;
        Ok(line
            .split_whitespace()
            .nth(2)
            .unwrap_or("")
            .parse::<f64>()?)
    };
    let mut setups = vec![
        ("none".to_owned(), "no filter".to_owned()),
        ("enforcer".to_owned(), "enforcer cgroup hooks".to_owned()),
    ];
    setups.extend(CONNECT_NFT_RULES.map(|n| {
        (
            format!("nft-{n}"),
            format!("nftables, {n} `socket cgroupv2` rules"),
        )
    }));
    let (none_p50, none_p99) = (
        figure("connect-p50-us", "none")?,
        figure("connect-p99-us", "none")?,
    );
    let mut table = String::from(
        "| setup | `connect()` p50 | vs no filter | p99 | vs no filter |\n|---|---:|---:|---:|---:|\n",
    );
    for (setup, what) in &setups {
        let (p50, p99) = (
            figure("connect-p50-us", setup)?,
            figure("connect-p99-us", setup)?,
        );
        println!("connect bench: {what}: p50 {p50:.2} us, p99 {p99:.2} us");
        writeln!(
            table,
            "| {what} | {p50:.2} µs | {:+.1}% | {p99:.2} µs | {:+.1}% |",
            (p50 / none_p50 - 1.0) * 100.0,
            (p99 / none_p99 - 1.0) * 100.0
        )?;
    }
    let body = format!(
        "## Outbound `connect()`: the cgroup hooks against nftables\n\nBlocking loopback `connect()`s inside a network namespace the benchmark creates, to a server that accepts and closes, each connection closed with a reset. Setups: no filter; the enforcer's cgroup hooks attached to the client's cgroup, a segment a rule allows to reach the port (`connect4` decides the `connect()`; `skb_egress` and `skb_ingress` see the client socket's packets, the SYN and the SYN-ACK among them); nftables in a namespace of its own, its output chain `ct state established,related accept`, then N rules `socket cgroupv2 level 2 \"PATH\" tcp dport P accept`, one per segment cgroup (each cgroup exists), the client's last, then `ct state new drop` (the rules live only in that namespace and go with it). {CONNECT_ROUNDS} rounds of {CONNECT_PER_ROUND} connections per setup (1e5 per setup), the setups in a rotating order; each figure is the median over the rounds of the round's p50 or p99. Machine: {}.\n\nReproduce: `./x bench connect` (as root; needs nftables)\n\n{table}\nTarget: the cgroup hooks add at most 5% to `connect()` p50, and less than nftables does.\n\nReading it: nftables evaluates its rules in order for a new connection's SYN, so its cost grows with the rules before the one that matches (here the client's is last: the worst case; a client in the middle pays half); its 10-rule figure also carries connection tracking, which `ct state` loads into the namespace. The hooks' cost does not depend on the number of rules (at most four rule-trie lookups per decision). The p99 figures on this shared machine are mostly scheduling noise (a run can show the unfiltered p99 above a filtered one); compare the p50s. How the hooks' own time splits between `connect4`, `skb_egress` and `skb_ingress` is not measured here: the kernel's per-program run time needs its global BPF statistics switch, which would slow every other BPF program on the machine while it is on.\n\n",
        machine,
    );
    let path = write_section(&tools.root, "connect", &body)?;
    println!("wrote {}", path.display());
    Ok(())
}
/// Rounds per filter and size in the filter comparison (deny windows, then streams).
const FILTER_ROUNDS: usize = 4;
/// Seconds of generated SYNs per deny window.
const FILTER_DENY_SECONDS: f64 = 2.0;
/// Seconds per allowed TCP stream.
const FILTER_STREAM_SECONDS: f64 = 2.0;
/// Rule counts compared.
const FILTER_SIZES: [u64; 4] = [10, 1_000, 10_000, 100_000];

/// The flattened form of [`XDP_PROBE_RULES`] (segment `s0` is 198.18.0.0/28).
const XDP_PROBE_FLAT: &str =
    "accept 198.18.0.0/28 tcp 10001 10001\ndrop 198.18.0.0/28 tcp 10002 10002\n";

/// One filter's figures at one size, from `enforcer-bench-filters`' output.
#[derive(Default)]
struct FilterRow {
    /// Dropped packets per second: median, min, max.
    pps: Option<[f64; 3]>,
    /// Dropped packets per softirq CPU second: median, min, max.
    per_core: Option<[f64; 3]>,
    /// Offered frames per second (median).
    offered: f64,
    /// Allowed TCP Gbit/s: median, min, max.
    gbps: Option<[f64; 3]>,
    /// The alternating streams to the unfiltered receiver: median, min, max.
    base_gbps: Option<[f64; 3]>,
    /// Load time in seconds and the entries the rules became.
    load: Option<(f64, f64)>,
    /// Why the cell is missing.
    missing: Option<String>,
}

/// `uptime`'s load averages (1, 5 and 15 minutes), for the record of how busy the
/// machine was.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Parses `enforcer-bench-filters`' output into rows keyed by (filter, size), in order.
fn filter_rows(stdout: &str) -> anyhow::Result<Vec<((String, u64), FilterRow)>> {
    let mut rows: Vec<((String, u64), FilterRow)> = Vec::new();
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(kind), Some(filter), Some(size)) = (words.first(), words.get(1), words.get(2))
        else {
            continue;
        };
        if !["deny", "tcp", "tcp-base", "load", "missing"].contains(kind) {
            continue;
        }
        let key = ((*filter).to_owned(), size.parse::<u64>()?);
        // "none" runs twice (first and last): each run is a row of its own.
        let start_new = match rows.last() {
            Some((last, row)) => *last != key || (*kind == "load" && row.load.is_some()),
            None => true,
        };
        if start_new {
            rows.push((key, FilterRow::default()));
        }
        let row = &mut rows.last_mut().expect("pushed").1;
        let numbers: Vec<f64> = words[3..].iter().filter_map(|w| w.parse().ok()).collect();
        match (*kind, numbers.as_slice()) {
            ("deny", [p, p0, p1, c, c0, c1, offered]) => {
                row.pps = Some([*p, *p0, *p1]);
                row.per_core = Some([*c, *c0, *c1]);
                row.offered = *offered;
            }
            ("tcp", [g, g0, g1]) => row.gbps = Some([*g, *g0, *g1]),
            ("tcp-base", [g, g0, g1]) => row.base_gbps = Some([*g, *g0, *g1]),
            ("load", [seconds, entries]) => row.load = Some((*seconds, *entries)),
            ("missing", _) => row.missing = Some(words[3..].join(" ")),
            _ => bail!("unexpected line {line:?}"),
        }
    }
    Ok(rows)
}

/// What each filter label stands for in the table.
fn filter_name(label: &str) -> &'static str {
    match label {
        "none" => "no filter",
        "enforcer-native" => "enforcer XDP, native (driver) mode",
        "enforcer-skb" => "enforcer XDP, generic (SKB) mode",
        "nft-netdev" => "nftables netdev ingress, sets",
        "nft-inet" => "nftables inet prerouting, sets, conntrack",
        "iptables" => "iptables-legacy raw PREROUTING, linear",
        "ipset" => "iptables-legacy raw PREROUTING + ipset",
        _ => "?",
    }
}

/// `median (min-max)` with `digits` decimals, scaled by `scale`.
fn med_range(values: Option<[f64; 3]>, scale: f64, digits: usize) -> String {
    values.map_or_else(
        || "-".to_owned(),
        |[m, lo, hi]| {
            format!(
                "{:.digits$} ({:.digits$}-{:.digits$})",
                m / scale,
                lo / scale,
                hi / scale
            )
        },
    )
}

/// Inbound deny throughput and allowed TCP throughput over a veth pair, the enforcer's
/// XDP program against nftables, iptables and ipset and no filter, in one run.
pub fn filters(tools: &Tools) -> anyhow::Result<()> {
    let bench = release_bin(tools, "enforcer-tests", "enforcer-bench-filters")?;
    let dir = tools.root.join("target/bench/filters");
    fs::create_dir_all(&dir)?;
    for rules in FILTER_SIZES {
        // As the XDP benchmark: 1k segments, the generated rules and the probe rules.
        let (mut policy, mut flat) = generate_flat(1_000, rules - 2);
        policy.push_str(XDP_PROBE_RULES);
        flat.push_str(XDP_PROBE_FLAT);
        fs::write(dir.join(format!("filters-{rules}.toml")), policy)?;
        fs::write(dir.join(format!("filters-{rules}.rules")), flat)?;
    }
    let load_before = load_average();
    let started = Instant::now();
    let mut args: Vec<std::ffi::OsString> = vec![
        dir.clone().into(),
        FILTER_ROUNDS.to_string().into(),
        FILTER_DENY_SECONDS.to_string().into(),
        FILTER_STREAM_SECONDS.to_string().into(),
    ];
    args.extend(FILTER_SIZES.iter().map(|s| s.to_string().into()));
    let arg_refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let stdout = run_bench(&bench, &arg_refs)?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let load_after = load_average();
    print!("{stdout}");
    let idle = stdout
        .lines()
        .find_map(|l| l.strip_prefix("idle-softirq "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let rows = filter_rows(&stdout)?;
    let body = filters_section(&rows, idle, &load_before, &load_after, minutes)?;
    let path = write_section(&tools.root, "filters", &body)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The median of a figure over the rows of `label` at `size` (`None`: every size).
fn figure(
    rows: &[((String, u64), FilterRow)],
    label: &str,
    size: Option<u64>,
    pick: impl Fn(&FilterRow) -> Option<[f64; 3]>,
) -> Option<f64> {
    let values: Vec<f64> = rows
        .iter()
        .filter(|((l, s), _)| l == label && size.is_none_or(|size| *s == size))
        .filter_map(|(_, row)| pick(row).map(|v| v[0]))
        .collect();
    (!values.is_empty()).then(|| median(values))
}

/// The change of a row's allowed TCP median against its own baseline, in percent.
fn tcp_change(row: &FilterRow) -> Option<f64> {
    let ([with, ..], [before, ..]) = (row.gbps?, row.base_gbps?);
    Some((with / before - 1.0) * 100.0)
}

/// The section's text: the table, the ratios against the targets, and how it was measured.
fn filters_section(
    rows: &[((String, u64), FilterRow)],
    idle: f64,
    load_before: &str,
    load_after: &str,
    minutes: f64,
) -> anyhow::Result<String> {
    let mut table = String::from(
        "| filter | rules | entries loaded | load time | dropped per second, kpps | dropped per softirq CPU-second, kpps | allowed TCP, Gbit/s: unfiltered receiver | filtered receiver | change |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((label, size), row) in rows {
        let rules = if label == "none" {
            "-".to_owned()
        } else {
            size.to_string()
        };
        if let Some(reason) = &row.missing {
            writeln!(
                table,
                "| {} | {rules} | | | not measured: {reason} | | | | |",
                filter_name(label)
            )?;
            continue;
        }
        let (load, entries) = row.load.map_or(("-".to_owned(), "-".to_owned()), |(s, e)| {
            (format!("{s:.1} s"), format!("{e:.0}"))
        });
        let tcp_change = tcp_change(row).map_or("-".to_owned(), |c| format!("{c:+.1}%"));
        writeln!(
            table,
            "| {} | {rules} | {entries} | {load} | {} | {} | {} | {} | {tcp_change} |",
            filter_name(label),
            med_range(row.pps, 1e3, 0),
            med_range(row.per_core, 1e3, 0),
            med_range(row.base_gbps, 1.0, 2),
            med_range(row.gbps, 1.0, 2),
        )?;
    }
    let per_core = |label: &str| figure(rows, label, Some(10_000), |r| r.per_core);
    let per_second = |label: &str| figure(rows, label, Some(10_000), |r| r.pps);
    let mut ratios = String::new();
    for ours in ["enforcer-native", "enforcer-skb"] {
        for theirs in ["nft-netdev", "nft-inet"] {
            if let (Some(a), Some(b), Some(c), Some(d)) = (
                per_core(ours),
                per_core(theirs),
                per_second(ours),
                per_second(theirs),
            ) {
                writeln!(
                    ratios,
                    "- {} against {} at 10k rules: {:.2}× per softirq CPU-second, {:.2}× per wall second (target ≥ 3×)",
                    filter_name(ours),
                    filter_name(theirs),
                    a / b,
                    c / d
                )?;
            }
        }
    }
    for label in ["enforcer-native", "enforcer-skb", "none"] {
        let changes: Vec<f64> = rows
            .iter()
            .filter(|((l, _), _)| l == label)
            .filter_map(|(_, row)| tcp_change(row))
            .collect();
        if let (Some(worst), Some(best)) = (
            changes.iter().copied().reduce(f64::min),
            changes.iter().copied().reduce(f64::max),
        ) {
            writeln!(
                ratios,
                "- {}: allowed TCP throughput against the unfiltered receiver, from {worst:+.1}% to {best:+.1}% over the sizes{}",
                filter_name(label),
                if label == "none" {
                    " (both unfiltered: the noise of this comparison)"
                } else {
                    " (target: a loss of at most 3%)"
                }
            )?;
        }
    }
    Ok(format!(
        "## Filters compared: inbound deny and allowed TCP over veth\n\n{FILTERS_METHOD}\n\nMachine: {}. Rounds: {FILTER_ROUNDS} deny windows of {FILTER_DENY_SECONDS} s and {FILTER_STREAM_SECONDS} s streams per filter and size; cells are medians with the min-max over the rounds in parentheses. Softirq time of the idle machine, subtracted: {idle:.3} CPU-seconds per second. Load average before / after: {load_before} / {load_after}; the run took {minutes:.1} min.\n\nReproduce: `./x bench filters` (as root)\n\n{table}\n{ratios}\n",
        machine()
    ))
}

/// How the filter comparison measures, for the section's reader.
const FILTERS_METHOD: &str = "Three network namespaces per filter and rule count, created fresh and deleted afterwards with every rule in them (nothing is loaded in the host's namespace): a generator and a receiver joined by a veth pair, and a receiver that is never filtered, joined to the generator by a pair of its own (the allowed stream's baseline). The generator is the kernel's live-frames mode of `BPF_PROG_TEST_RUN` (`BPF_F_TEST_XDP_LIVE_FRAMES`, batches of 64, as `xdp-trafficgen` uses it) on a 17-instruction XDP program that gives each TCP SYN a random source address in 198.18.0.0/16 and a random source port (checksums kept valid by compensating fields) and returns `XDP_TX`, so every frame leaves the generator's veth end and arrives at the receiver's, which needs NAPI for that (GRO on, or the enforcer's native XDP program). Every SYN goes to port 10002 of the receiver, one of the protected ports 10000-10999 (the generated segments' listener ports), which no rule opens to those sources: the enforcer denies it by default, the other filters by their last rule. Rules: the policies of the XDP benchmark (1k segments, the given number of rules between them, 10% deny, TCP single ports and ranges, UDP), flattened for the other filters into one entry per source /28, protocol and port range (ranges as ranges; ipset expands them to single ports; overlapping ranges of one source merged for nft, whose interval sets refuse overlaps), plus an entry allowing the stream below. nftables netdev: a `filter` chain on the receiver's ingress hook, a deny set and an allow set of `ipv4_addr . inet_proto . inet_service` intervals, then `tcp dport 10000-10999 drop`. nftables inet: the same at `prerouting` priority 0, after conntrack, with `ct state established,related accept` first. iptables: `iptables-legacy` (the classic xtables path, not the nft backend) in the raw table's PREROUTING, one rule per entry, drops first, then accepts, then the protected ports dropped; with ipset: two `hash:net,port` sets matched by two rules instead. Dropped packets are read from the filter's own counters before and after each window: the enforcer's deny counters (per-CPU maps), the nft rule counters, the iptables rule counters; with no filter, the receiver's `Ip: InReceives`. Per-core figure: the receiver's processing runs in the NET_RX softirq (on the generator's CPU, at the end of each batch, or in ksoftirqd when it falls behind), so packets dropped are divided by the softirq CPU time of all CPUs over the window (`/proc/stat`, sampled by the 250 Hz tick: this kernel has no IRQ time accounting), less the idle machine's softirq rate (the window runs until 0.5 s after the generator stops, for the receiver to empty its 256-frame ring); the raw rate (dropped per second the generator ran) shares the CPU with the generator, which offered frames as fast as it could; the receiver took them inline at the end of each batch, or dropped what its full ring could not hold. No filter drops nothing: its figures are IPv4 datagrams received (each answered by nothing: the sources have no route back). Allowed TCP: one connection from the generator's address to a sink in the receiver on port 10001 (allowed by each rule set's last entry), writing 128 KiB buffers, GRO off (the veth's default), alternating round by round (and which goes first) with the same stream from the generator to a third namespace that is never filtered, over a veth pair of its own: the change compares the two medians, measured under the same machine load. No filter is measured first and last; there both receivers are unfiltered, which shows the noise of that comparison, and the drift of the machine over the run.";

/// Runs benchmark `which`, or every one in turn (each writes its own section of
/// docs/benchmarks.md; the first that fails stops the run).
pub fn run(tools: &Tools, which: Option<BenchCommand>) -> anyhow::Result<()> {
    let all = [
        BenchCommand::Policy,
        BenchCommand::Xdp,
        BenchCommand::Agent,
        BenchCommand::Audit,
        BenchCommand::Socket,
        BenchCommand::Connect,
        BenchCommand::Filters,
    ];
    for which in which.map_or(all.to_vec(), |which| vec![which]) {
        match which {
            BenchCommand::Policy => policy(tools),
            BenchCommand::Xdp => xdp(tools),
            BenchCommand::Agent => agent(tools),
            BenchCommand::Audit => audit(tools),
            BenchCommand::Socket => socket(tools),
            BenchCommand::Connect => connect(tools),
            BenchCommand::Filters => filters(tools),
        }?;
    }
    Ok(())
}
