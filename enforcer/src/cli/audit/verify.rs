//! `enforcer audit verify DIR`: exit 0 for an intact store, 1 naming the first broken
//! record and why. With `--verify-key`, every forward-secure seal is checked under its
//! epoch's key; with `--key-file` (the host's sealing key), a store whose sealed end was
//! cut off shows.

use std::{path::PathBuf, process::ExitCode};

use crate::audit::{
    record::rfc3339,
    seal::{VerifyKey, read_key},
    verify::{Proof, Sealing, Summary, verify},
};

/// Exit code of a store whose chain is broken.
const EXIT_BROKEN: u8 = 1;

/// Arguments of `enforcer audit verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The audit store directory.
    dir: PathBuf,
    /// The verification key `enforcer audit setup-keys` showed
    /// (`enforcer-verify-1:...`): proves every epoch seal.
    #[arg(long, value_name = "KEY", value_parser = parse_verify_key)]
    verify_key: Option<VerifyKey>,
    /// The host's sealing key file (`audit.seal_key`): shows a store whose sealed end was
    /// cut off.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_verify_key(text: &str) -> Result<VerifyKey, String> {
    text.parse()
}

/// Verifies the store.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let host_key = args
        .key_file
        .as_deref()
        .map(read_key)
        .transpose()
        .map_err(|err| anyhow::anyhow!("--key-file: {err}"))?;
    let proof = Proof {
        verify_key: args.verify_key.clone(),
        host_key,
    };
    let outcome = verify(&args.dir, &proof)
        .map_err(|err| anyhow::anyhow!("{}: {err}", args.dir.display()))?;
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
                println!("{}", intact_line(&summary));
                println!("{}", sealing_line(summary.sealing.as_ref(), &proof));
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

fn intact_line(summary: &Summary) -> String {
    format!(
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
    )
}

fn sealing_line(sealing: Option<&Sealing>, proof: &Proof) -> String {
    let Some(sealing) = sealing else {
        return "sealed: no (no forward-secure seal in this store: the chain alone does not stop root from rewriting it)".to_owned();
    };
    let how = if sealing.proven {
        "proven with the verification key"
    } else {
        "NOT proven: without --verify-key only the chain is checked, which root can recompute"
    };
    let unsealed = if sealing.unsealed_records == 0 {
        String::new()
    } else {
        format!(
            "; unsealed since {}: {} records no seal covers yet",
            rfc3339(sealing.last_sealed_at).unwrap_or_default(),
            sealing.unsealed_records
        )
    };
    let end = if proof.host_key.is_some() {
        "; the host's key follows the last seal"
    } else {
        ""
    };
    format!(
        "sealed: epochs {}..={} ({} seals) through record {}, {how}{unsealed}{end}",
        sealing.first_epoch, sealing.last_epoch, sealing.seals, sealing.sealed_through
    )
}
