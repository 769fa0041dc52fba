//! `enforcer policy diff OLD NEW`.

use std::{path::PathBuf, process::ExitCode};

use super::{EXIT_DIFFERENT, load_or_report};
use crate::policy::diff::diff;

/// Arguments of `enforcer policy diff`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The current policy (file or directory).
    old: PathBuf,
    /// The candidate policy (file or directory).
    new: PathBuf,
    /// Print the difference as JSON.
    #[arg(long)]
    json: bool,
}

/// Prints verdict changes grouped by segment pair, then rule, segment and failsafe
/// changes, then their summary (the one the agent records for an applied generation);
/// exits 0 when nothing differs, 1 when something does.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let old = match load_or_report(std::slice::from_ref(&args.old))? {
        Ok(compiled) => compiled,
        Err(code) => return Ok(code),
    };
    let new = match load_or_report(std::slice::from_ref(&args.new))? {
        Ok(compiled) => compiled,
        Err(code) => return Ok(code),
    };
    let changes = diff((&old.policy, &old.image), (&new.policy, &new.image));
    // As diff(1): 0 when the policies decide alike, 1 when they differ.
    let code = if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFFERENT)
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
        return Ok(code);
    }
    if changes.is_empty() {
        println!("no changes: every flow gets the same verdict");
        return Ok(code);
    }
    if changes.verdicts.is_empty() {
        println!("no verdict changes");
    } else {
        println!("verdict changes:");
        for pair in &changes.verdicts {
            println!("  {} -> {}", pair.from, pair.to);
            for change in &pair.changes {
                println!("    {:<18} {} -> {}", change.ports, change.old, change.new);
            }
        }
    }
    for (title, items) in [
        ("rules", &changes.rules),
        ("segments", &changes.segments),
        ("failsafes", &changes.failsafes),
    ] {
        if !items.is_empty() {
            println!("{title}:");
            for item in items {
                println!("  {:<8} {}", item.change, item.name);
            }
        }
    }
    println!("summary: {}", changes.summary);
    Ok(code)
}
