//! `./x fuzz` and the fuzz tier of `./x test`: every cargo-fuzz target under `fuzz/` runs
//! for a bounded time, seeded with the corpora kept in the repository.
//!
//! Each target's seeds are `fuzz/corpus/<target>/` (plus, for the policy parser, the
//! shipped and the broken example policies). libFuzzer writes the inputs it finds to
//! `target/fuzz-corpus/<target>/`, never into the repository, so a run leaves the working
//! tree as it was; a crashing input lands in `fuzz/artifacts/<target>/`.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    run::{Tools, status},
    setup::{CargoTool, NIGHTLY, install_cargo_tool},
};

/// The cargo-fuzz release the fuzz tooling uses.
const CARGO_FUZZ: CargoTool = CargoTool {
    krate: "cargo-fuzz",
    version: "0.13.2",
    binary: "cargo-fuzz",
    version_args: &["--version"],
};

/// Every fuzz target (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [&str; 6] = [
    "policy",
    "config",
    "bundle",
    "audit_record",
    "audit_verify",
    "audit_compact",
];

/// How long `./x test` fuzzes each target.
pub const TEST_SECONDS_PER_TARGET: u64 = 20;

/// The longest one input may take before libFuzzer calls it a hang (a failure).
const INPUT_TIMEOUT_SECONDS: u64 = 10;

/// The repository directories holding `target`'s seeds.
fn seed_dirs(tools: &Tools, target: &str) -> Vec<PathBuf> {
    let mut dirs = vec![tools.root.join("fuzz/corpus").join(target)];
    if target == "policy" {
        for dir in [
            "policies/enclave",
            "policies/demo",
            "enforcer/tests/broken-policies",
        ] {
            dirs.push(tools.root.join(dir));
        }
    }
    dirs
}

/// The outcome of fuzzing one target.
struct Ran {
    target: &'static str,
    took: Duration,
    crashed: bool,
}

/// Fuzzes each of `targets` (all when empty) for `seconds`; fails if libFuzzer finds a
/// crash, a hang or a leak in any of them (after running the others).
pub fn run(tools: &Tools, targets: &[String], seconds: u64) -> anyhow::Result<()> {
    let chosen: Vec<&'static str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets
            .iter()
            .map(|wanted| {
                TARGETS
                    .into_iter()
                    .find(|target| target == wanted)
                    .with_context(|| format!("no fuzz target {wanted}; there are {TARGETS:?}"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    install_cargo_tool(tools, &CARGO_FUZZ)?;
    let started = Instant::now();
    // One build for every target; `fuzz run` below finds it up to date.
    status(&mut tools.cargo(&[
        &format!("+{NIGHTLY}"),
        "fuzz",
        "build",
        "--fuzz-dir",
        "fuzz",
    ]))?;
    let built = started.elapsed();
    let mut ran = Vec::new();
    for target in chosen {
        ran.push(run_one(tools, target, seconds)?);
    }
    println!(
        "fuzz: built in {:.0} s, fuzzed in {:.0} s ({seconds} s per target):",
        built.as_secs_f64(),
        (started.elapsed() - built).as_secs_f64()
    );
    for one in &ran {
        println!(
            "  {:<13} {:>4.0} s  {}",
            one.target,
            one.took.as_secs_f64(),
            if one.crashed { "FAILED" } else { "no crash" }
        );
    }
    let crashed: Vec<&str> = ran
        .iter()
        .filter(|one| one.crashed)
        .map(|one| one.target)
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz targets failed: {}; the failing inputs are under fuzz/artifacts/<target>/",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// Fuzzes `target` for `seconds` with its own scratch directory as `TMPDIR`.
fn run_one(tools: &Tools, target: &'static str, seconds: u64) -> anyhow::Result<Ran> {
    let work = tools.root.join("target/fuzz-corpus").join(target);
    let scratch = tools.root.join("target/fuzz-tmp").join(target);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let mut command = tools.cargo(&[
        &format!("+{NIGHTLY}"),
        "fuzz",
        "run",
        "--fuzz-dir",
        "fuzz",
        target,
    ]);
    command
        .arg(&work)
        .args(seed_dirs(tools, target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .env("TMPDIR", &scratch);
    let started = Instant::now();
    let outcome = status(&mut command);
    let took = started.elapsed();
    fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    if let Err(err) = &outcome {
        eprintln!("fuzz: {target}: {err:#}");
    }
    Ok(Ran {
        target,
        took,
        crashed: outcome.is_err(),
    })
}
