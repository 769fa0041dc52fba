//! `enforcer audit verify DIR`: exit 0 for an intact store, 1 naming the first broken
//! record and why.

use std::{path::PathBuf, process::ExitCode};

use crate::audit::verify::verify;

/// Exit code of a store whose chain is broken.
const EXIT_BROKEN: u8 = 1;

/// Arguments of `enforcer audit verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The audit store directory.
    dir: PathBuf,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

/// Verifies the store.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let outcome =
        verify(&args.dir).map_err(|err| anyhow::anyhow!("{}: {err}", args.dir.display()))?;
    if args.json {
        let value = match &outcome {
            Ok(summary) => serde_json::json!({ "intact": true, "summary": summary }),
            Err(broken) => serde_json::json!({ "intact": false, "break": broken }),
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    match outcome {
        Ok(summary) => {
            if !args.json {
                println!(
                    "intact: {} records ({} flows) in {} files, sequence {}..={}; {} events recorded as lost{}",
                    summary.records,
                    summary.flows,
                    summary.files,
                    summary.first_sequence,
                    summary.last_sequence,
                    summary.lost,
                    if summary.removed_by_retention > 0 {
                        format!(
                            "; {} older files removed by retention",
                            summary.removed_by_retention
                        )
                    } else {
                        String::new()
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(broken) => {
            if !args.json {
                eprintln!("broken: {broken}");
            }
            Ok(ExitCode::from(EXIT_BROKEN))
        }
    }
}
