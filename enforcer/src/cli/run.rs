//! `enforcer run --config FILE`: the agent, in the foreground (systemd runs it so).

use std::{path::PathBuf, process::ExitCode};

use crate::{
    agent,
    config::{self, Config},
};

/// Arguments of `enforcer run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's config file.
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
}

/// Checks the config (refusing it with every problem named, before anything is
/// attached), then runs the agent until SIGTERM.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(refused) => {
            for problem in &refused.problems {
                tracing::error!("config: {problem}");
            }
            tracing::error!(
                "config {} refused: {} problem(s); nothing was attached",
                args.config.display(),
                refused.problems.len()
            );
            return Ok(ExitCode::from(2));
        }
    };
    agent::run(config, &args.config)?;
    Ok(ExitCode::SUCCESS)
}
