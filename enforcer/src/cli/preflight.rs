//! `enforcer preflight`: can this host run enforcer?

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;

use crate::{host, loader::Loader};

/// Arguments of `enforcer preflight`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Loads every program, reports what the kernel says about each, and the host mounts.
/// Attaches nothing and leaves nothing behind: the programs unload on exit.
pub fn run(_args: &Args) -> anyhow::Result<ExitCode> {
    let cgroup2 = host::cgroup2_mount().context("cgroup v2")?;
    println!("cgroup2 mounted at {}", cgroup2.display());
    let bpffs = Path::new(host::DEFAULT_BPFFS);
    if host::is_bpffs(bpffs)? {
        println!("bpffs mounted at {}", bpffs.display());
    } else {
        println!(
            "bpffs not mounted at {} (the agent mounts it when it starts)",
            bpffs.display()
        );
    }
    let loader = Loader::load().context("loading the kernel programs")?;
    println!("{:<12} {:>8} {:>14}", "program", "id", "verified insns");
    for program in loader.programs()? {
        let verified = program
            .verified_instructions
            .map_or_else(|| "-".to_owned(), |n| n.to_string());
        println!(
            "{:<12} {:>8} {:>14}",
            program.hook.program_name(),
            program.id,
            verified
        );
    }
    println!("maps: {}", loader.map_names().join(", "));
    println!("preflight ok: every program passed the verifier on this kernel");
    Ok(ExitCode::SUCCESS)
}
