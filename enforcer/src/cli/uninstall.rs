//! `enforcer uninstall`: remove every program, link, map and pin the agent made, and its
//! state files; nothing else (the audit store stays: it is evidence; so does the
//! anti-rollback floor in `data_dir`).

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};

use crate::{agent::state::StateDir, config::Config, loader::PinLayout};

/// Arguments of `enforcer uninstall`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's config file (for its pin and state directories).
    #[arg(long, default_value = crate::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Print what was removed and kept as JSON.
    #[arg(long)]
    json: bool,
}

/// Refuses while an agent runs; otherwise removes the pins (links first, which
/// detaches the programs) and the state files.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)
        .map_err(|refused| anyhow::anyhow!("config {}: {refused}", args.config.display()))?;
    let state = StateDir::new(&config.state_dir);
    if state.agent_running() {
        bail!(
            "the agent is running (it holds {}); stop it first (systemctl stop enforcer)",
            config.state_dir.join("agent.lock").display()
        );
    }
    let pins = PinLayout::new(&config.pin_dir);
    let removal = pins.remove().context("removing the pins")?;
    let state_files = state.remove().context("removing the state files")?;
    if args.json {
        let report = serde_json::json!({
            "removed": removal.removed.iter().chain(&state_files).collect::<Vec<_>>(),
            "kept": removal.kept,
            "audit_dir": config.audit.dir,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    for path in removal.removed.iter().chain(&state_files) {
        println!("removed {}", path.display());
    }
    for path in &removal.kept {
        println!("kept {} (not made by enforcer)", path.display());
    }
    println!(
        "enforcement removed; the audit store in {} is kept",
        config.audit.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
