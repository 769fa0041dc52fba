//! `cargo xtask`: project automation. Run it through `./x`, which first installs the
//! pinned userspace toolchain that cargo itself needs.

mod bench;
mod check;
mod demo;
mod fuzz;
mod mutants;
mod package;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Project automation for enforcer.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the pinned nightly with rust-src, bpf-linker (built against that nightly's
    /// libLLVM into `.tools/`) and the Debian packages the tests need. Idempotent.
    Setup,
    /// Formatting and clippy (`-D warnings`) for the userspace crates and, separately, the
    /// eBPF crate.
    Check,
    /// Setup, checks, then every test tier: unit and property tests, then (after removing
    /// what an interrupted earlier run left, and building the packages, which
    /// tests/tests/package.rs installs and purges) the privileged kernel tests (root required;
    /// nothing is skipped), then the leftovers check, then a bounded run of every fuzz
    /// target.
    Test,
    /// Setup, build, and run the demo enclave: sandboxed hosts and services, the real
    /// agent with `policies/demo/`, a traffic matrix, the audit trail; then clean up.
    Demo {
        /// Keep a copy of the demo's audit store in this directory (new or empty), for
        /// `enforcer audit query --dir DIR` and the other audit commands.
        #[arg(long, value_name = "DIR")]
        keep: Option<std::path::PathBuf>,
    },
    /// Setup, then build the static binary (x86_64-unknown-linux-musl), a .deb and an .rpm
    /// into target/package/: binary, systemd unit, default config, drop-in example,
    /// example policies, man page and completions.
    Package,
    /// Measure and write the tables in docs/benchmarks.md (figures, never assertions).
    Bench {
        /// Which benchmark (all of them, one after the other, when none is named).
        #[command(subcommand)]
        which: Option<BenchCommand>,
    },
    /// Fuzz with cargo-fuzz for a bounded time: the policy, config, bundle, audit record
    /// and audit verify targets, each seeded with its corpus under `fuzz/corpus/`.
    Fuzz {
        /// How long to fuzz each target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The targets to fuzz (default: every one).
        targets: Vec<String>,
    },
    /// Mutation testing (cargo-mutants) of the policy compiler, the audit store and the
    /// shared decision code against the tests that need no root; prints the score and
    /// every missed mutant, and fails under 90 %. Every mutant takes most of a day here.
    Mutants {
        /// Only every N-th mutant, starting at the K-th (`K/N`, K from 0): a sample
        /// spread over every file.
        #[arg(long, value_name = "K/N")]
        shard: Option<String>,
    },
}

/// The benchmarks `./x bench` runs.
#[derive(Debug, Clone, Copy, Subcommand)]
pub(crate) enum BenchCommand {
    /// Policy compile time and peak memory at 1k, 10k and 100k rules.
    Policy,
    /// Per-packet cost of the XDP program at 10 to 100k rules against an empty program
    /// (root required).
    Xdp,
    /// Time from a policy file write to enforcement, and the agent's resident memory,
    /// at 1k and 100k rules (root required).
    Agent,
    /// Audit events per second from the kernel to the store, event-to-store latency, bytes
    /// per stored flow, and `audit query/stats/verify/export` over 10M records (root
    /// required).
    Audit,
    /// What the cgroup hooks (the per-socket ingress layer) cost an established TCP
    /// stream and a UDP request/response loop over a veth pair (root required).
    Socket,
    /// Loopback `connect()` p50/p99: no filter, the enforcer's cgroup hooks, and nftables
    /// output rules matching the client's cgroup at 10 and 1k rules (root required).
    Connect,
    /// Inbound deny throughput (live frames over a veth pair) and allowed TCP throughput
    /// with the enforcer's XDP program, nftables, iptables, ipset and no filter, at 10 to
    /// 100k rules, each inside network namespaces of its own (root required).
    Filters,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Setup => setup::run().map(|_| ()),
        Command::Check => setup::run().and_then(|tools| check::run(&tools)),
        Command::Test => setup::run().and_then(|tools| test::run(&tools)),
        Command::Demo { keep } => setup::run().and_then(|tools| demo::run(&tools, keep.as_deref())),
        Command::Package => setup::run().and_then(|tools| package::run(&tools)),
        Command::Bench { which } => setup::run().and_then(|tools| bench::run(&tools, which)),
        Command::Mutants { shard } => {
            setup::run().and_then(|tools| mutants::run(&tools, shard.as_deref()))
        }
        Command::Fuzz { seconds, targets } => {
            setup::run().and_then(|tools| fuzz::run(&tools, &targets, seconds))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
