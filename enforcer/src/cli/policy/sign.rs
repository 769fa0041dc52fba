//! `enforcer policy sign PATH --key KEY --bundle-version N -o BUNDLE`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use super::load_or_report;
use crate::policy::bundle::{key_id, read_private_key, sign};

/// Arguments of `enforcer policy sign`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The private key (from `enforcer keygen`).
    #[arg(long)]
    key: PathBuf,
    /// The bundle's version; agents refuse a bundle older than one they accepted.
    #[arg(long)]
    bundle_version: u64,
    /// Where to write the bundle.
    #[arg(short, long)]
    output: PathBuf,
    /// Print what was signed as JSON.
    #[arg(long)]
    json: bool,
}

/// Compiles the policy (refusing an invalid one) and writes the signed bundle.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let compiled = match load_or_report(&args.paths)? {
        Ok(compiled) => compiled,
        Err(code) => return Ok(code),
    };
    let key = read_private_key(&args.key)?;
    let bundle = sign(&compiled, args.bundle_version, &key);
    std::fs::write(&args.output, bundle)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let (id, image) = (key_id(&key.verifying_key()), compiled.image.digest_hex());
    if args.json {
        let report = serde_json::json!({
            "bundle": args.output,
            "version": args.bundle_version,
            "key_id": id,
            "image_sha256": image,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "signed {} as version {} with key {id}: image sha256 {image}",
            args.output.display(),
            args.bundle_version,
        );
    }
    Ok(ExitCode::SUCCESS)
}
