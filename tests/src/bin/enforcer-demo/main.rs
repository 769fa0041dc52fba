//! `enforcer-demo [--keep DIR] POLICY_DIR`: the README's main command (`./x demo` runs it).
//!
//! Builds a sandboxed enclave on this machine (an application host and three remote
//! hosts as network namespaces, the host's API services as cgroups running HTTP
//! servers), runs the real agent on it with the policy in POLICY_DIR
//! (`policies/demo/`), drives a traffic matrix with real clients, prints expected
//! against observed verdicts with the rule the audit trail names for each, shows the
//! audit records, what stays enforced when the agent stops, and a `verify` of the store,
//! then removes everything it made (with `--keep DIR`, a copy of the audit store stays in
//! DIR for `enforcer audit` commands). Exit status 0 only when every row is as expected,
//! the store verifies and nothing is left behind.

mod matrix;
mod report;
mod sandbox;

use std::{
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use enforcer::audit::record::Record;
use enforcer_tests::{
    agent::enforcer_bin,
    leftovers::{self, DEMO},
};

use crate::{
    matrix::{MATRIX, Tried, try_all},
    sandbox::{Enclave, NAME, REMOTES, SERVICES},
};

/// How long the audit records of the matrix may take to reach the store.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Set by SIGINT/SIGTERM; the demo stops at its next step and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Lets Ctrl-C end the demo through its cleanup instead of killing it outright.
fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_interrupt as *const () as libc::sighandler_t) };
    }
}

/// Unwinds (dropping, and so removing, everything built so far) when interrupted.
fn step(title: &str) {
    assert!(
        !INTERRUPTED.load(Ordering::SeqCst),
        "interrupted; cleaning up"
    );
    println!("\n== {title}");
}

/// Runs `enforcer ARGS`, printing the command line and its output; returns whether it
/// succeeded.
fn show(args: &[&str]) -> bool {
    println!("$ enforcer {}", args.join(" "));
    let output = Command::new(enforcer_bin())
        .args(args)
        .output()
        .expect("run enforcer");
    print!("{}", String::from_utf8_lossy(&output.stdout));
    print!("{}", String::from_utf8_lossy(&output.stderr));
    output.status.success()
}

/// Waits (bounded) until every tried flow has its record in the store.
fn records_of(enclave: &Enclave, tried: &[Tried]) -> Vec<Record> {
    let started = Instant::now();
    loop {
        let records: Vec<Record> = enclave.agent.audit_records();
        let complete = tried
            .iter()
            .all(|tried| records.iter().any(|record| tried.is_recorded_by(record)));
        if complete || started.elapsed() > RECORD_TIMEOUT {
            return records;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn introduce(policy: &Path) {
    println!("enforcer demo: a sandboxed enclave on this machine, the real agent, real traffic.");
    println!("  this host       network namespace {NAME}-host, cgroup {NAME}/ (agent attached)");
    for service in SERVICES {
        let serves = service
            .port
            .map_or("makes requests only".to_owned(), |port| {
                format!("HTTP on port {port}")
            });
        println!(
            "    {:<10}    cgroup {NAME}/{}.service, {serves}",
            service.name, service.name
        );
    }
    for remote in REMOTES {
        println!(
            "  {:<14}  namespace {NAME}-{}, {} on interface to-{}: {}",
            remote.name,
            remote.name,
            remote.addr(false),
            remote.name,
            remote.role
        );
    }
    println!("  policy          {}", policy.display());
    println!("  agent binary    {}", enforcer_bin().display());
}

/// What `--help` prints.
const USAGE: &str = "\
usage: enforcer-demo [--keep DIR] POLICY_DIR   (as root; ./x demo runs it with policies/demo)

Builds a sandboxed enclave on this machine (network namespaces for the remote hosts,
cgroups for the API services), runs the real agent on it with the policy in POLICY_DIR,
drives a traffic matrix with real clients, prints expected against observed verdicts with
the rule the audit trail names, shows the audit records and a verify of the store, then
removes everything it made.

  --keep DIR   keep a copy of the sandbox's audit store in DIR (new or empty) to explore
               with `enforcer audit query --dir DIR`, `audit stats --dir DIR`,
               `audit verify DIR`
  -h, --help   print this help

Exit status: 0 when every flow is as the policy says, the store verifies and nothing is
left behind; 1 otherwise; 2 for a usage error.

The agent and the `enforcer` commands are the build's own (target/<profile>/enforcer);
ENFORCER_BIN=/usr/bin/enforcer runs the demo with an installed package's binary instead.
";

/// The command line.
struct Options {
    /// The policy directory.
    policy: PathBuf,
    /// Where to keep a copy of the audit store.
    keep: Option<PathBuf>,
}

/// Reads the command line; `Err` with the exit code when there is nothing to run.
fn options(args: &[String]) -> Result<Options, ExitCode> {
    let mut policy = None;
    let mut keep = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Err(ExitCode::SUCCESS);
            }
            "--keep" => match args.next() {
                Some(dir) => keep = Some(PathBuf::from(dir)),
                None => {
                    eprintln!("enforcer-demo: --keep needs a DIR\n\n{USAGE}");
                    return Err(ExitCode::from(2));
                }
            },
            _ if arg.starts_with('-') || policy.is_some() => {
                eprintln!("enforcer-demo: unexpected `{arg}`\n\n{USAGE}");
                return Err(ExitCode::from(2));
            }
            _ => policy = Some(PathBuf::from(arg)),
        }
    }
    let Some(policy) = policy else {
        eprintln!("enforcer-demo: no POLICY_DIR\n\n{USAGE}");
        return Err(ExitCode::from(2));
    };
    if let Some(dir) = &keep
        && std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
    {
        eprintln!("enforcer-demo: --keep {} is not empty", dir.display());
        return Err(ExitCode::from(2));
    }
    Ok(Options { policy, keep })
}

/// Copies the audit store in `from` into `to` (created if needed).
fn keep_store(from: &Path, to: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(to)?;
    let mut copied = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// The whole demo on a fresh sandbox; returns whether everything was as expected.
fn demo(policy: &Path, keep: Option<&Path>) -> bool {
    introduce(policy);
    step("the policy, as the agent will compile it");
    let policy_arg = policy.to_string_lossy().into_owned();
    show(&["policy", "check", &policy_arg]);

    step("starting the sandbox and the agent");
    let mut enclave = Enclave::start(policy);
    let status = enclave.agent.status();
    println!(
        "agent pid {} enforcing generation {} on cgroup {} and XDP on {}",
        enclave.agent.pid(),
        status["generation"],
        enclave.sandbox_cgroup(),
        REMOTES
            .iter()
            .map(|remote| remote.host_if())
            .collect::<Vec<_>>()
            .join(", ")
    );

    step("the traffic matrix: every flow tried by a real client");
    let tried = try_all(&enclave, &MATRIX);
    let records = records_of(&enclave, &tried);
    let matched = report::print_matrix(&tried, &records, true);
    println!("{matched} of {} flows as expected.", tried.len());

    step("why was the client's request to orders denied?");
    let client = REMOTES[0].addr(false).to_string();
    show(&[
        "policy",
        "explain",
        &policy_arg,
        "--from",
        &client,
        "--to",
        "orders",
        "--port",
        "8081/tcp",
    ]);

    step("the audit trail (what a SOC analyst reads)");
    let config = enclave.agent.config();
    let config = config.to_string_lossy();
    show(&["audit", "query", "--config", &config]);
    println!("(A dropped inbound attempt can show twice: the client retransmits its SYN after");
    println!(" a second, and a retransmit later than audit.dedup_window_ms, 1000 by default,");
    println!(" after the first is recorded again.)");
    show(&["audit", "stats", "--config", &config]);

    step("the agent stops: enforcement stays in the kernel");
    let stopped_cleanly = enclave.agent.terminate();
    println!("agent stopped (SIGTERM, clean exit: {stopped_cleanly}); trying three flows again:");
    let tried_again = try_all(&enclave, &[MATRIX[0], MATRIX[2], MATRIX[8]]);
    let matched_again = report::print_matrix(&tried_again, &[], false);

    step("verifying the audit store's hash chain");
    let audit_dir = enclave.agent.audit_dir();
    let verified = show(&["audit", "verify", &audit_dir.to_string_lossy()]);
    let kept = keep.is_none_or(|dir| match keep_store(&audit_dir, dir) {
        Ok(files) => {
            println!(
                "\nthe audit store ({files} files) is kept in {dir}: try\n  enforcer audit query --dir {dir}\n  enforcer audit stats --dir {dir}\n  enforcer audit verify {dir}",
                dir = dir.display()
            );
            true
        }
        Err(err) => {
            eprintln!("cannot keep the audit store in {}: {err}", dir.display());
            false
        }
    });

    let (namespaces, cgroups, processes) = enclave.size();
    step("cleaning up");
    drop(enclave);
    println!(
        "removed {namespaces} network namespaces (and their veth pairs), {cgroups} cgroups, \
         {processes} processes, the pins under /sys/fs/bpf/{NAME} (`enforcer uninstall`) \
         and the agent's files"
    );
    matched == tried.len()
        && matched_again == tried_again.len()
        && stopped_cleanly
        && verified
        && kept
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match options(&args) {
        Ok(options) => options,
        Err(code) => return code,
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "enforcer-demo: needs root (network namespaces, cgroups, BPF); run `sudo ./x demo`"
        );
        return ExitCode::from(2);
    }
    let policy = std::fs::canonicalize(&options.policy).unwrap_or(options.policy);
    catch_interrupts();

    let swept = leftovers::sweep(DEMO);
    if !swept.is_empty() {
        println!("removed what an interrupted earlier run left:");
        for leftover in swept {
            println!("  {leftover}");
        }
    }
    let keep = options.keep.as_deref();
    let passed = std::panic::catch_unwind(AssertUnwindSafe(|| demo(&policy, keep)));
    let left = leftovers::find(DEMO);
    if !left.is_empty() {
        eprintln!("enforcer-demo: left behind (the next run removes them):");
        for leftover in &left {
            eprintln!("  {leftover}");
        }
        return ExitCode::FAILURE;
    }
    println!("nothing of the demo is left on this machine.");
    match passed {
        Ok(true) => {
            println!("\ndemo passed: every flow as the policy says, the audit store verified.");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("\ndemo FAILED: see the rows marked MISMATCH or the verify output above.");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("\ndemo FAILED: it stopped at the error above.");
            ExitCode::FAILURE
        }
    }
}
