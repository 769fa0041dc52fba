//! `./x fuzz`: runs the policy parser's cargo-fuzz target for a bounded time, seeded with
//! the shipped and the broken example policies.

use std::fs;

use anyhow::{Context as _, bail};

use crate::{
    run::{Tools, status, stdout},
    setup::NIGHTLY,
};

/// The cargo-fuzz release the fuzz tooling uses.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn install_cargo_fuzz(tools: &Tools) -> anyhow::Result<()> {
    let installed = stdout(tools.command("cargo-fuzz").arg("--version"));
    if installed.is_some_and(|v| v.contains(CARGO_FUZZ_VERSION)) {
        return Ok(());
    }
    status(
        tools
            .cargo(&[
                "install",
                &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
                "--locked",
                "--root",
            ])
            .arg(&tools.dir),
    )
    .context("installing cargo-fuzz (needs the crates registry)")
}

/// Fuzzes the policy target for `seconds`; fails if libFuzzer finds a crash.
pub fn run(tools: &Tools, seconds: u64) -> anyhow::Result<()> {
    install_cargo_fuzz(tools)?;
    let corpus = tools.root.join("target").join("fuzz-corpus").join("policy");
    fs::create_dir_all(&corpus)?;
    for dir in ["policies/enclave", "enforcer/tests/broken-policies"] {
        for entry in fs::read_dir(tools.root.join(dir)).with_context(|| format!("reading {dir}"))? {
            let path = entry?.path();
            if let Some(name) = path.file_name() {
                fs::copy(&path, corpus.join(name))?;
            }
        }
    }
    let mut command = tools.cargo(&[
        &format!("+{NIGHTLY}"),
        "fuzz",
        "run",
        "--fuzz-dir",
        "fuzz",
        "policy",
    ]);
    command
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"));
    if let Err(err) = status(&mut command) {
        bail!("{err:#}; the crashing input is under fuzz/artifacts/policy/");
    }
    println!("fuzz: the policy target ran {seconds} s without a crash");
    Ok(())
}
