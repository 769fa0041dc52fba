//! `enforcer policy verify BUNDLE --trusted-key PUB`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::policy::bundle::{key_id, read_public_key, verify};

/// Arguments of `enforcer policy verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The bundle.
    bundle: PathBuf,
    /// The public key the bundle must be signed with.
    #[arg(long)]
    trusted_key: PathBuf,
    /// Refuse bundles older than this version (the last one accepted).
    #[arg(long, default_value_t = 0)]
    min_version: u64,
    /// Print the outcome as JSON (on standard output, refused or not).
    #[arg(long)]
    json: bool,
}

/// Exit code for a refused bundle.
const EXIT_REFUSED: u8 = 3;

/// Prints the verified bundle's version and image hash, or why it is refused.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let trusted = read_public_key(&args.trusted_key)?;
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    let outcome = verify(&bytes, &trusted, args.min_version);
    if args.json {
        let report = match &outcome {
            Ok(verified) => serde_json::json!({
                "bundle": args.bundle,
                "accepted": true,
                "version": verified.payload.version,
                "files": verified.payload.sources.len(),
                "image_sha256": verified.payload.image_sha256,
                "key_id": key_id(&trusted),
            }),
            Err(err) => serde_json::json!({
                "bundle": args.bundle,
                "accepted": false,
                "reason": err.to_string(),
            }),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(if outcome.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_REFUSED)
        });
    }
    match outcome {
        Ok(verified) => {
            println!(
                "bundle OK: version {}, {} file(s), image sha256 {}",
                verified.payload.version,
                verified.payload.sources.len(),
                verified.payload.image_sha256
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("bundle REFUSED: {}: {err}", args.bundle.display());
            Ok(ExitCode::from(EXIT_REFUSED))
        }
    }
}
