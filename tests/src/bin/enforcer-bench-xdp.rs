//! `enforcer-bench-xdp POLICY REPEAT RUNS`: the per-packet cost of the XDP program, by
//! `BPF_PROG_TEST_RUN`, next to an empty XDP program measured in the same process.
//!
//! The policy is compiled and applied to a freshly loaded (unattached) kernel object.
//! Then each probe packet runs `RUNS` times `REPEAT` times; each line printed is
//! `LABEL ACTION MEDIAN_NS`, where ACTION is the XDP return code (1 drop, 2 pass) and
//! MEDIAN_NS the median over the runs of the kernel's mean time per packet. Probe
//! packets, all IPv4 TCP from 198.18.0.1 (the first address of segment `s0` in the
//! benchmark's generated policies):
//! - `allow`: a SYN to port 10001, allowed by rule `bench-allow`;
//! - `deny`: a SYN to port 10002, denied by rule `bench-deny`;
//! - `no-match`: a SYN to port 10003, which no rule covers (default deny);
//! - `established`: an ACK to port 10001, parsed and passed without a decision.
//!
//! Run by `./x bench xdp`, which generates the policies and writes the table.

use std::{net::Ipv4Addr, process::ExitCode, time::Duration};

use enforcer::{
    loader::Loader,
    policy::{compile_sources, source::SourceSet},
};
use enforcer_tests::{
    bpf_raw::RawXdp,
    packet::{ACK, SYN, tcp4},
};

/// Source of every probe packet: inside `s0`'s 198.18.0.0/28.
const SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

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

    let empty = RawXdp::empty()?;
    let median = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2].as_nanos()
    };
    let probe = tcp4(SOURCE, 10001, SYN);
    let mut samples = Vec::new();
    let mut action = 0;
    for _ in 0..runs {
        let (code, mean) = empty.test_run(&probe, repeat)?;
        action = code;
        samples.push(mean);
    }
    println!("empty {action} {}", median(samples));

    for (label, packet) in [
        ("allow", tcp4(SOURCE, 10001, SYN)),
        ("deny", tcp4(SOURCE, 10002, SYN)),
        ("no-match", tcp4(SOURCE, 10003, SYN)),
        ("established", tcp4(SOURCE, 10001, ACK)),
    ] {
        let mut samples = Vec::new();
        let mut action = 0;
        for _ in 0..runs {
            let (code, mean) = loader
                .test_run_xdp(&packet, repeat)
                .map_err(|e| e.to_string())?;
            action = code;
            samples.push(mean);
        }
        println!("{label} {action} {}", median(samples));
    }
    Ok(())
}
