//! `enforcer-bench-filters DIR ROUNDS SECONDS STREAM_SECONDS SIZE...`: inbound deny
//! throughput and allowed TCP throughput across a veth pair with each filter a user might
//! pick (the enforcer's XDP program, nftables, iptables, ipset) and with none, in one run.
//!
//! Every filter lives in network namespaces of its own: for each filter and rule count a
//! fresh pair, `nf<pid><n>g` (the generator) and `nf<pid><n>r` (the receiver), joined by
//! a veth pair (and the unfiltered receiver below), is created, and deleting it on drop (also on error) removes the veth and
//! every nft table, iptables rule and ipset set in it. Nothing touches this process's
//! own namespace.
//!
//! The generator is the kernel's live-frames mode of `BPF_PROG_TEST_RUN` (as
//! `xdp-trafficgen` uses it) on a tiny XDP program in the generator namespace that gives
//! each TCP SYN a random source in 198.18.0.0/16 and a random source port and returns
//! `XDP_TX`: the frames go out of the generator's veth end into the receiver's, which
//! has NAPI (GRO on, or the enforcer's native XDP program) so that it takes them. Every
//! SYN goes to a port of the protected range 10000-10999 that no rule allows for those
//! sources, so every filter drops it. Each deny window runs the generator for SECONDS
//! and reads, before and after:
//! - what the filter dropped: the enforcer's deny counters, the nft rule counters, the
//!   iptables rule counters; with no filter, `Ip: InReceives` of the receiver;
//! - the CPU time spent in softirq on every CPU (`/proc/stat`), minus the idle rate
//!   measured at the start: the receiver's processing runs in the NET_RX softirq (here
//!   on the generator's CPU, at the end of each batch).
//!
//! Then the allowed flow: one TCP connection from the generator's address to a sink in
//! the receiver namespace on port 10001, which each filter's rule set allows, writing
//! for STREAM_SECONDS, ROUNDS times (GRO off, the veth's default), alternating with the
//! same stream to a third namespace, `nf<pid><n>p`, joined to the generator by a pair
//! of its own and never filtered: the baseline, measured under the same machine load.
//!
//! DIR holds `filters-SIZE.toml` (the enforcer's policy) and `filters-SIZE.rules` (the
//! same rules flattened, `accept|drop CIDR tcp|udp LOW HIGH` a line) for each SIZE, as
//! `./x bench filters` writes them. Output lines:
//! - `idle-softirq CPUS`: the softirq time per second of the idle machine;
//! - `deny FILTER SIZE PPS MIN MAX PPS_PER_CORE MIN MAX OFFERED_PPS`: medians and extremes
//!   over the rounds of packets dropped per second of wall time and per second of
//!   softirq CPU time, and the generator's offered rate;
//! - `tcp FILTER SIZE GBPS MIN MAX`, and `tcp-base FILTER SIZE GBPS MIN MAX` for the
//!   alternating streams to the unfiltered receiver;
//! - `load FILTER SIZE SECONDS ENTRIES`: how long the rules took to load, and how many
//!   entries they became;
//! - `missing FILTER SIZE REASON`: a cell that could not be measured, and why.

use std::{
    fs,
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use enforcer::loader::Loader;
use enforcer_common::event::Verdict;
use enforcer_tests::{
    bpf_raw::RawXdp,
    netns::{Netns, add_veth, address_up, setns_net},
    policy::image,
    probe::stream_gbps,
};

/// The receiver's veth address.
const RX_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 1);
/// The generator's veth address (the allowed flow's client).
const GEN_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 2);
/// The unfiltered receiver's veth address (the allowed flow's baseline).
const PLAIN_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 253, 1);
/// The generator's address on the pair to the unfiltered receiver.
const GEN_PLAIN_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 253, 2);
/// The receiver's MAC address (the generated frames' destination).
const RX_MAC: [u8; 6] = [0x02, 0x6e, 0x66, 0, 0, 1];
/// The generator's MAC address.
const GEN_MAC: [u8; 6] = [0x02, 0x6e, 0x66, 0, 0, 2];
/// The denied SYNs' destination port (segment `s2`'s listener port).
const DENY_PORT: u16 = 10_002;
/// The allowed flow's port (segment `s1`'s listener port).
const ALLOW_PORT: u16 = 10_001;
/// The protected ports: every generated segment's listener port, which the enforcer
/// denies by default and the other filters' last rule drops.
const PROTECTED: (u16, u16) = (10_000, 10_999);
/// Longest time a rule set may take to load before its cell is reported missing.
const LOAD_TIMEOUT_S: u64 = 90;
/// How long the receiver is given after the generator stops to take what its ring holds.
const DRAIN: Duration = Duration::from_millis(500);
/// Largest ipset (its port ranges expanded to single ports) the bench loads.
const IPSET_MAX_ENTRIES: u64 = 4_000_000;
/// The policy text that puts the generator's address in a segment allowed to reach `s1`.
const CLIENT_POLICY: &str = r#"
[segments.bench-client]
cidrs = ["198.19.254.2/32"]

[[allow]]
id = "bench-client-stream"
from = ["bench-client"]
to = ["s1"]
ports = ["10001/tcp"]
"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [dir, rounds, seconds, stream, sizes @ ..] if !sizes.is_empty() => rounds
            .parse::<usize>()
            .ok()
            .zip(seconds.parse::<f64>().ok())
            .zip(stream.parse::<f64>().ok())
            .zip(sizes.iter().map(|s| s.parse::<u64>().ok()).collect())
            .map(|(((rounds, seconds), stream), sizes)| Run {
                dir: PathBuf::from(dir),
                rounds: rounds.clamp(1, 20),
                seconds: seconds.clamp(0.5, 30.0),
                stream_seconds: stream.clamp(0.5, 30.0),
                sizes,
            }),
        _ => None,
    };
    let Some(run) = parsed else {
        eprintln!("usage: enforcer-bench-filters DIR ROUNDS SECONDS STREAM_SECONDS SIZE...");
        return ExitCode::from(2);
    };
    match bench(&run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("enforcer-bench-filters: {err}");
            ExitCode::FAILURE
        }
    }
}

/// What to measure.
struct Run {
    dir: PathBuf,
    rounds: usize,
    seconds: f64,
    stream_seconds: f64,
    sizes: Vec<u64>,
}

/// The filters compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// No filter at all.
    None,
    /// The enforcer's XDP program, attached in driver (native) mode, which the agent's
    /// default `auto` mode gets on veth.
    EnforcerNative,
    /// The enforcer's XDP program in generic (SKB) mode.
    EnforcerSkb,
    /// nftables, netdev family, ingress hook, sets.
    NftNetdev,
    /// nftables, inet family, prerouting hook (after conntrack), sets.
    NftInet,
    /// iptables-legacy, raw table, PREROUTING, one rule per entry.
    IptablesLinear,
    /// iptables-legacy, raw table, PREROUTING, matching ipset sets.
    Ipset,
}

impl Filter {
    const WITH_RULES: [Self; 6] = [
        Self::EnforcerNative,
        Self::EnforcerSkb,
        Self::NftNetdev,
        Self::NftInet,
        Self::IptablesLinear,
        Self::Ipset,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::EnforcerNative => "enforcer-native",
            Self::EnforcerSkb => "enforcer-skb",
            Self::NftNetdev => "nft-netdev",
            Self::NftInet => "nft-inet",
            Self::IptablesLinear => "iptables",
            Self::Ipset => "ipset",
        }
    }
}

fn bench(run: &Run) -> Result<(), String> {
    enforcer_tests::require_root();
    let work = run.dir.join("work");
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let idle = idle_softirq_rate()?;
    println!("idle-softirq {idle:.4}");
    let mut cases = vec![(Filter::None, 0)];
    for filter in Filter::WITH_RULES {
        cases.extend(run.sizes.iter().map(|&size| (filter, size)));
    }
    // No filter again at the end, so the machine's drift over the run shows.
    cases.push((Filter::None, 0));
    for (filter, size) in cases {
        if let Err(reason) = measure_case(run, &work, idle, filter, size) {
            println!("missing {} {size} {reason}", filter.label());
        }
    }
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// One filter at one size in a fresh pair of namespaces: load, deny rounds, TCP rounds.
fn measure_case(
    run: &Run,
    work: &Path,
    idle: f64,
    filter: Filter,
    size: u64,
) -> Result<(), String> {
    let lab = Lab::new()?;
    let started = Instant::now();
    let (mut installed, entries) = install(filter, size, &lab, &run.dir, work)?;
    println!(
        "load {} {size} {:.1} {entries}",
        filter.label(),
        started.elapsed().as_secs_f64()
    );
    let generator = RawXdp::source_randomizer()?;
    let frame = syn_template();
    lab.gro(true)?;
    let mut samples = Vec::new();
    for _ in 0..run.rounds {
        samples.push(deny_window(
            &lab,
            &generator,
            &frame,
            &mut installed,
            run.seconds,
            idle,
        )?);
    }
    lab.gro(false)?;
    let (with, without) = tcp_rounds(&lab, run.rounds, run.stream_seconds)?;
    let (gbps, base) = (spread(&with), spread(&without));
    let pps: Vec<f64> = samples.iter().map(|s| s.packets / s.seconds).collect();
    let per_core: Vec<f64> = samples
        .iter()
        .map(|s| s.packets / s.softirq_seconds)
        .collect();
    let offered: Vec<f64> = samples.iter().map(|s| s.offered / s.seconds).collect();
    let (p, c) = (spread(&pps), spread(&per_core));
    let label = filter.label();
    println!(
        "deny {label} {size} {:.0} {:.0} {:.0} {:.0} {:.0} {:.0} {:.0}",
        p.0,
        p.1,
        p.2,
        c.0,
        c.1,
        c.2,
        spread(&offered).0
    );
    println!(
        "tcp {label} {size} {:.3} {:.3} {:.3}",
        gbps.0, gbps.1, gbps.2
    );
    println!(
        "tcp-base {label} {size} {:.3} {:.3} {:.3}",
        base.0, base.1, base.2
    );
    Ok(())
}

/// Median, minimum and maximum.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

/// The generator and receiver namespaces and the veth pair between them, and a second
/// receiver with no filter on a pair of its own (the allowed flow's baseline); dropping
/// it deletes the namespaces, and with them the veths and every rule loaded in them.
struct Lab {
    rx: Netns,
    plain: Netns,
    generator: Netns,
    rx_if: String,
    rx_ifindex: u32,
    gen_ifindex: u32,
}

impl Lab {
    fn new() -> Result<Self, String> {
        let id = format!("{}{}", std::process::id(), enforcer_tests::next_serial());
        let rx = Netns::named(&format!("nf{id}r"));
        let plain = Netns::named(&format!("nf{id}p"));
        let generator = Netns::named(&format!("nf{id}g"));
        let (rx_if, gen_if) = (format!("nf{id}r"), format!("nf{id}g"));
        let (plain_if, gen_plain_if) = (format!("nf{id}p"), format!("nf{id}q"));
        if rx_if.len() > 15 {
            return Err(format!("interface name {rx_if} is too long"));
        }
        add_veth(Some(&rx), &rx_if, &generator, &gen_if);
        rx.ip(&["link", "set", "dev", &rx_if, "address", &mac(RX_MAC)]);
        generator.ip(&["link", "set", "dev", &gen_if, "address", &mac(GEN_MAC)]);
        address_up(Some(&rx), &rx_if, &[(RX_V4.into(), 30)]);
        address_up(Some(&generator), &gen_if, &[(GEN_V4.into(), 30)]);
        add_veth(Some(&plain), &plain_if, &generator, &gen_plain_if);
        address_up(Some(&plain), &plain_if, &[(PLAIN_V4.into(), 30)]);
        address_up(
            Some(&generator),
            &gen_plain_if,
            &[(GEN_PLAIN_V4.into(), 30)],
        );
        let rx_ifindex = ifindex(&rx, &rx_if)?;
        let gen_ifindex = ifindex(&generator, &gen_if)?;
        Ok(Self {
            rx,
            plain,
            generator,
            rx_if,
            rx_ifindex,
            gen_ifindex,
        })
    }

    /// Turns GRO (and with it NAPI, which live frames need) on the receiving end on or off.
    fn gro(&self, on: bool) -> Result<(), String> {
        let state = if on { "on" } else { "off" };
        in_rx(self, &["ethtool", "-K", &self.rx_if, "gro", state], 10).map(|_| ())
    }
}

/// `aa:bb:...` of a MAC address.
fn mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The index of `dev` in `netns` (`ip -o link show` starts with it).
fn ifindex(netns: &Netns, dev: &str) -> Result<u32, String> {
    let line = netns.ip(&["-o", "link", "show", "dev", dev]);
    line.split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .ok_or_else(|| format!("no index for {dev} in {line:?}"))
}

/// Runs `args` inside the receiver namespace, killed after `timeout_s`; returns stdout.
fn in_rx(lab: &Lab, args: &[&str], timeout_s: u64) -> Result<String, String> {
    let output = Command::new("timeout")
        .arg(timeout_s.to_string())
        .args(["ip", "netns", "exec", lab.rx.name()])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    match output.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        Some(124) => Err(format!(
            "`{}` did not finish within {timeout_s} s",
            args.join(" ")
        )),
        _ => Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join(" / ")
        )),
    }
}

/// Runs `f` with the calling thread in the namespace behind `netns`, then returns the
/// thread to its own namespace.
fn with_netns<T>(netns: &Netns, f: impl FnOnce() -> T) -> Result<T, String> {
    let home = File::open("/proc/thread-self/ns/net").map_err(|e| format!("own netns: {e}"))?;
    setns_net(&netns.open()).map_err(|e| format!("setns {}: {e}", netns.name()))?;
    let result = f();
    setns_net(&home).map_err(|e| format!("setns back: {e}"))?;
    Ok(result)
}

/// One entry of a flattened rule set.
struct Entry {
    accept: bool,
    cidr: String,
    proto: String,
    low: u16,
    high: u16,
}

/// The flattened rules of `size`, with the allowed flow's entry last.
fn entries(dir: &Path, size: u64) -> Result<Vec<Entry>, String> {
    let path = dir.join(format!("filters-{size}.rules"));
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut entries = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [action, cidr, proto, low, high] = fields[..] else {
            return Err(format!("{}: bad line {line:?}", path.display()));
        };
        entries.push(Entry {
            accept: action == "accept",
            cidr: cidr.to_owned(),
            proto: proto.to_owned(),
            low: low.parse().map_err(|_| format!("bad port in {line:?}"))?,
            high: high.parse().map_err(|_| format!("bad port in {line:?}"))?,
        });
    }
    entries.push(Entry {
        accept: true,
        cidr: format!("{GEN_V4}/32"),
        proto: "tcp".into(),
        low: ALLOW_PORT,
        high: ALLOW_PORT,
    });
    Ok(entries)
}

/// The entries with `accept`, overlapping port ranges of one source and protocol merged
/// (an nft interval set refuses overlapping elements; the set's meaning is the same).
fn merged(entries: &[Entry], accept: bool) -> Vec<(String, String, u16, u16)> {
    let mut chosen: Vec<(String, String, u16, u16)> = entries
        .iter()
        .filter(|e| e.accept == accept)
        .map(|e| (e.cidr.clone(), e.proto.clone(), e.low, e.high))
        .collect();
    chosen.sort();
    let mut out: Vec<(String, String, u16, u16)> = Vec::with_capacity(chosen.len());
    for entry in chosen {
        match out.last_mut() {
            Some(last) if last.0 == entry.0 && last.1 == entry.1 && entry.2 <= last.3 => {
                last.3 = last.3.max(entry.3);
            }
            _ => out.push(entry),
        }
    }
    out
}

/// A loaded filter, and how to read what it dropped.
enum Installed {
    None,
    Enforcer(Loader),
    Nft {
        family: &'static str,
        chain: &'static str,
    },
    Iptables,
}

impl Installed {
    /// Packets dropped so far (with no filter: IPv4 datagrams received).
    fn dropped(&mut self, lab: &Lab) -> Result<u64, String> {
        match self {
            Self::None => Ok(lab.rx.ipv4_received()),
            Self::Enforcer(loader) => Ok(loader
                .counters()
                .map_err(|e| e.to_string())?
                .by_reason
                .iter()
                .filter(|c| c.verdict == Verdict::Deny)
                .map(|c| c.count)
                .sum()),
            Self::Nft { family, chain } => {
                let listing = in_rx(lab, &["nft", "list", "chain", family, "nfbench", chain], 60)?;
                Ok(listing
                    .lines()
                    .filter(|line| line.trim_end().ends_with("drop"))
                    .filter_map(|line| number_after(line, "packets"))
                    .sum())
            }
            Self::Iptables => {
                let listing = in_rx(
                    lab,
                    &[
                        "iptables-legacy",
                        "-t",
                        "raw",
                        "-L",
                        "PREROUTING",
                        "-v",
                        "-x",
                        "-n",
                    ],
                    60,
                )?;
                Ok(listing
                    .lines()
                    .filter_map(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        (fields.get(2) == Some(&"DROP"))
                            .then(|| fields[0].parse::<u64>().ok())
                            .flatten()
                    })
                    .sum())
            }
        }
    }
}

/// The number after the word `word` in `line`.
fn number_after(line: &str, word: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == word)?;
    words.next()?.parse().ok()
}

/// Loads `filter` with the rules of `size` into the receiver; returns it and how many
/// entries the rules became.
fn install(
    filter: Filter,
    size: u64,
    lab: &Lab,
    dir: &Path,
    work: &Path,
) -> Result<(Installed, usize), String> {
    match filter {
        Filter::None => Ok((Installed::None, 0)),
        Filter::EnforcerNative => enforcer(lab, dir, size, XdpMode::Driver),
        Filter::EnforcerSkb => enforcer(lab, dir, size, XdpMode::Skb),
        Filter::NftNetdev | Filter::NftInet => nft(filter, lab, &entries(dir, size)?, work),
        Filter::IptablesLinear => iptables_linear(lab, &entries(dir, size)?, work),
        Filter::Ipset => ipset(lab, &entries(dir, size)?, work),
    }
}

/// Compiles the policy of `size` (plus the allowed flow's segment and rule), applies it
/// and attaches the XDP program to the receiver's veth end in `mode`.
fn enforcer(lab: &Lab, dir: &Path, size: u64, mode: XdpMode) -> Result<(Installed, usize), String> {
    let path = dir.join(format!("filters-{size}.toml"));
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let image = image(&format!("{text}{CLIENT_POLICY}"));
    let mut loader = Loader::load().map_err(|e| e.to_string())?;
    let root = enforcer::host::cgroup2_mount().map_err(|e| e.to_string())?;
    loader.apply(&image, &root).map_err(|e| e.to_string())?;
    with_netns(&lab.rx, || {
        loader.attach_xdp(&lab.rx_if, lab.rx_ifindex, mode)
    })?
    .map_err(|e| format!("attach XDP: {e}"))?;
    let entries = loader
        .map_fill()
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|fill| fill.map == "rules")
        .map(|fill| fill.entries as usize)
        .sum();
    Ok((Installed::Enforcer(loader), entries))
}

/// An nft set of `(source, protocol, port range)` elements named `name`.
fn nft_set(name: &str, elements: &[(String, String, u16, u16)]) -> String {
    let mut text = format!(
        "  set {name} {{\n    type ipv4_addr . inet_proto . inet_service\n    flags interval\n"
    );
    if !elements.is_empty() {
        text.push_str("    elements = {\n");
        for (cidr, proto, low, high) in elements {
            let ports = if low == high {
                low.to_string()
            } else {
                format!("{low}-{high}")
            };
            text.push_str(&format!("      {cidr} . {proto} . {ports},\n"));
        }
        text.push_str("    }\n");
    }
    text.push_str("  }\n");
    text
}

/// nftables with two sets (drop, then accept) and a last rule dropping the protected
/// ports: at the netdev ingress hook, or at inet prerouting after conntrack (with
/// established flows accepted first, as a stateful rule set does).
fn nft(
    filter: Filter,
    lab: &Lab,
    entries: &[Entry],
    work: &Path,
) -> Result<(Installed, usize), String> {
    let (deny, allow) = (merged(entries, false), merged(entries, true));
    let (family, chain, hook, first) = if filter == Filter::NftNetdev {
        (
            "netdev",
            "ingress",
            format!(
                "type filter hook ingress device \"{}\" priority 0;",
                lab.rx_if
            ),
            "",
        )
    } else {
        (
            "inet",
            "prerouting",
            "type filter hook prerouting priority 0;".to_owned(),
            "    ct state established,related accept\n",
        )
    };
    let (low, high) = PROTECTED;
    let text = format!(
        "table {family} nfbench {{\n{}{}  chain {chain} {{\n    {hook} policy accept;\n{first}    ip saddr . meta l4proto . th dport @deny counter drop\n    ip saddr . meta l4proto . th dport @allow counter accept\n    tcp dport {low}-{high} counter drop\n  }}\n}}\n",
        nft_set("deny", &deny),
        nft_set("allow", &allow),
    );
    let file = work.join("nft.conf");
    fs::write(&file, text).map_err(|e| e.to_string())?;
    in_rx(lab, &["nft", "-f", &file.to_string_lossy()], LOAD_TIMEOUT_S)?;
    Ok((Installed::Nft { family, chain }, deny.len() + allow.len()))
}

/// `iptables-legacy-restore` input for the raw table's PREROUTING with `rules`.
fn raw_table(rules: &str) -> String {
    format!(
        "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}-A PREROUTING -p tcp -m tcp --dport {}:{} -j DROP\nCOMMIT\n",
        PROTECTED.0, PROTECTED.1
    )
}

/// iptables-legacy, raw PREROUTING: one rule per entry, the drops first, then the
/// accepts (the allowed flow's last), then the protected ports dropped.
fn iptables_linear(
    lab: &Lab,
    entries: &[Entry],
    work: &Path,
) -> Result<(Installed, usize), String> {
    let mut rules = String::new();
    for accept in [false, true] {
        for e in entries.iter().filter(|e| e.accept == accept) {
            rules.push_str(&format!(
                "-A PREROUTING -s {} -p {} -m {} --dport {}:{} -j {}\n",
                e.cidr,
                e.proto,
                e.proto,
                e.low,
                e.high,
                if accept { "ACCEPT" } else { "DROP" }
            ));
        }
    }
    let file = work.join("iptables.rules");
    fs::write(&file, raw_table(&rules)).map_err(|e| e.to_string())?;
    in_rx(
        lab,
        &["iptables-legacy-restore", &file.to_string_lossy()],
        LOAD_TIMEOUT_S,
    )?;
    Ok((Installed::Iptables, entries.len()))
}

/// ipset `hash:net,port` sets `nfdeny` and `nfallow` (port ranges expand to one element
/// per port), matched by two iptables-legacy rules in raw PREROUTING.
fn ipset(lab: &Lab, entries: &[Entry], work: &Path) -> Result<(Installed, usize), String> {
    let expanded: u64 = entries.iter().map(|e| u64::from(e.high - e.low) + 1).sum();
    if expanded > IPSET_MAX_ENTRIES {
        return Err(format!(
            "the port ranges expand to {expanded} ipset elements, over the bench's bound of {IPSET_MAX_ENTRIES}"
        ));
    }
    let maxelem = expanded + 16;
    let hashsize = (maxelem / 2).next_power_of_two().max(1024);
    let mut text = String::new();
    for set in ["nfdeny", "nfallow"] {
        text.push_str(&format!(
            "create {set} hash:net,port family inet hashsize {hashsize} maxelem {maxelem}\n"
        ));
    }
    for e in entries {
        let set = if e.accept { "nfallow" } else { "nfdeny" };
        let ports = if e.low == e.high {
            e.low.to_string()
        } else {
            format!("{}-{}", e.low, e.high)
        };
        text.push_str(&format!("add {set} {},{}:{ports}\n", e.cidr, e.proto));
    }
    let file = work.join("ipset.restore");
    fs::write(&file, text).map_err(|e| e.to_string())?;
    in_rx(
        lab,
        &[
            "ipset",
            "restore",
            "-exist",
            "-file",
            &file.to_string_lossy(),
        ],
        LOAD_TIMEOUT_S,
    )?;
    let rules = "-A PREROUTING -m set --match-set nfdeny src,dst -j DROP\n-A PREROUTING -m set --match-set nfallow src,dst -j ACCEPT\n";
    let file = work.join("iptables-ipset.rules");
    fs::write(&file, raw_table(rules)).map_err(|e| e.to_string())?;
    in_rx(
        lab,
        &["iptables-legacy-restore", &file.to_string_lossy()],
        LOAD_TIMEOUT_S,
    )?;
    Ok((
        Installed::Iptables,
        usize::try_from(expanded).unwrap_or(usize::MAX),
    ))
}

/// Ones'-complement sum of `bytes` as 16-bit big-endian words, added to `sum`.
fn ones_sum(bytes: &[u8], mut sum: u32) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
        sum += word;
    }
    sum
}

/// The folded, complemented checksum of a sum.
fn checksum(mut sum: u32) -> [u8; 2] {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

/// The generator's template: a TCP SYN from 198.18.0.0 to the receiver's `DENY_PORT`,
/// with valid checksums, the source port 0, the IP identification and the TCP sequence
/// number all ones (see [`RawXdp::source_randomizer`], which fills them in per frame).
fn syn_template() -> Vec<u8> {
    let mut frame = Vec::with_capacity(54);
    frame.extend_from_slice(&RX_MAC);
    frame.extend_from_slice(&GEN_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[4..6].copy_from_slice(&[0xff, 0xff]);
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[198, 18, 0, 0]);
    ip[16..20].copy_from_slice(&RX_V4.octets());
    let ip_sum = checksum(ones_sum(&ip, 0));
    ip[10..12].copy_from_slice(&ip_sum);
    let mut tcp = [0u8; 20];
    tcp[2..4].copy_from_slice(&DENY_PORT.to_be_bytes());
    tcp[4..8].copy_from_slice(&[0xff; 4]);
    tcp[12] = 5 << 4;
    tcp[13] = enforcer_tests::packet::SYN;
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let pseudo = ones_sum(&ip[12..20], 6 + 20);
    let tcp_sum = checksum(ones_sum(&tcp, pseudo));
    tcp[16..18].copy_from_slice(&tcp_sum);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

/// Softirq time of every CPU so far, in seconds (`/proc/stat`, first line, seventh value).
fn softirq_seconds() -> Result<f64, String> {
    let stat = fs::read_to_string("/proc/stat").map_err(|e| e.to_string())?;
    let ticks: f64 = stat
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .ok_or("no softirq time in /proc/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Softirq CPU seconds per second while nothing is generated (timers, other processes'
/// traffic), over two seconds.
fn idle_softirq_rate() -> Result<f64, String> {
    let before = softirq_seconds()?;
    std::thread::sleep(Duration::from_secs(2));
    Ok((softirq_seconds()? - before) / 2.0)
}

/// One deny window's figures.
struct DenySample {
    /// Packets the filter dropped.
    packets: f64,
    /// Frames the generator offered.
    offered: f64,
    /// Wall time the generator ran.
    seconds: f64,
    /// Softirq CPU time while it ran and the receiver drained its ring, less the idle
    /// rate.
    softirq_seconds: f64,
}

/// Runs the generator for `seconds` and reads what the filter dropped and what it cost.
fn deny_window(
    lab: &Lab,
    generator: &RawXdp,
    frame: &[u8],
    installed: &mut Installed,
    seconds: f64,
    idle: f64,
) -> Result<DenySample, String> {
    let before = installed.dropped(lab)?;
    let (cpu_before, started) = (softirq_seconds()?, Instant::now());
    let offered = with_netns(&lab.generator, || {
        drive(generator, frame, lab.gen_ifindex, seconds)
    })??;
    let driven = started.elapsed().as_secs_f64();
    // The receiver may still hold up to a ring (256 frames) of them: at the slowest
    // filter here (about 1 ms a frame) a quarter of a second.
    std::thread::sleep(DRAIN);
    let cpu = softirq_seconds()? - cpu_before - idle * started.elapsed().as_secs_f64();
    let packets = (installed.dropped(lab)? - before) as f64;
    if packets == 0.0 {
        return Err(format!("the filter dropped none of {offered} frames"));
    }
    Ok(DenySample {
        packets,
        offered: offered as f64,
        seconds: driven,
        softirq_seconds: cpu.max(0.01),
    })
}

/// Sends live frames for `seconds` in calls of a size that keeps each near 100 ms;
/// returns how many were offered.
fn drive(generator: &RawXdp, frame: &[u8], ifindex: u32, seconds: f64) -> Result<u64, String> {
    let started = Instant::now();
    let (mut repeat, mut offered) = (16_384u32, 0u64);
    // At most one call per millisecond of the window, whatever each call takes.
    for _ in 0..(seconds * 1000.0) as u64 {
        if started.elapsed().as_secs_f64() >= seconds {
            break;
        }
        let call = Instant::now();
        generator.send_live(frame, ifindex, repeat)?;
        offered += u64::from(repeat);
        let took = call.elapsed();
        if took > Duration::from_millis(200) && repeat > 64 {
            repeat /= 2;
        } else if took < Duration::from_millis(50) && repeat < 1 << 20 {
            repeat *= 2;
        }
    }
    Ok(offered)
}

/// `rounds` TCP streams of `seconds` each from the generator to a sink in the filtered
/// receiver and as many to one in the unfiltered receiver, alternating (which goes first
/// alternates too); Gbit/s of each, filtered and unfiltered.
fn tcp_rounds(lab: &Lab, rounds: usize, seconds: f64) -> Result<(Vec<f64>, Vec<f64>), String> {
    let mut sinks = Vec::new();
    let mut addresses = Vec::new();
    for (netns, address) in [(&lab.rx, RX_V4), (&lab.plain, PLAIN_V4)] {
        let listener = with_netns(netns, || TcpListener::bind((address, ALLOW_PORT)))?
            .map_err(|e| format!("sink on {address}: {e}"))?;
        sinks.push(std::thread::spawn(move || sink(&listener, rounds)));
        addresses.push(SocketAddr::from((address, ALLOW_PORT)));
    }
    let mut gbps = [Vec::with_capacity(rounds), Vec::with_capacity(rounds)];
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let address = addresses[which];
            let figure = with_netns(&lab.generator, || stream_gbps(address, seconds))?
                .map_err(|e| format!("stream to {address}: {e}"))?;
            gbps[which].push(figure);
        }
    }
    for sink in sinks {
        sink.join()
            .map_err(|_| "a sink panicked".to_owned())?
            .map_err(|e| format!("sink: {e}"))?;
    }
    let [with, without] = gbps;
    Ok((with, without))
}

/// Reads `connections` connections to their end, answering each with the byte count
/// (the protocol of `enforcer-probe tcp-sink`).
fn sink(listener: &TcpListener, connections: usize) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 256 * 1024];
    for _ in 0..connections {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut read = 0u64;
        loop {
            let n = stream.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            read += n as u64;
        }
        writeln!(stream, "{read}")?;
    }
    Ok(())
}
