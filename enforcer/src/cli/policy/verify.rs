//! `enforcer policy verify BUNDLE --trusted-key PUB`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::policy::bundle::{read_public_key, verify};

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
}

/// Exit code for a refused bundle.
const EXIT_REFUSED: u8 = 3;

/// Prints the verified bundle's version and image hash, or why it is refused.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let trusted = read_public_key(&args.trusted_key)?;
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    match verify(&bytes, &trusted, args.min_version) {
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
