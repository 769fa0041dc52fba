//! `enforcer audit setup-keys`: creates the forward-secure sealing key the agent seals
//! the audit chain with, and shows the verification key once (with a QR code on a
//! terminal) to be kept offline, as `journalctl --setup-keys` does.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};
use qrcode::{QrCode, render::unicode::Dense1x2};

use crate::{
    audit::seal::{VerifyKey, write_key},
    config::Config,
};

/// Arguments of `enforcer audit setup-keys`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the sealing key (default: `audit.seal_key` of the agent's config).
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// The agent's config file, read when --key-file is not given.
    #[arg(long, default_value = crate::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Replace an existing sealing key (stores sealed with it stay verifiable with its
    /// verification key only).
    #[arg(long)]
    force: bool,
    /// Print the key file and the verification key as JSON.
    #[arg(long)]
    json: bool,
}

/// Creates the key pair.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let path = match &args.key_file {
        Some(path) => path.clone(),
        None => Config::load(&args.config)
            .with_context(|| {
                format!(
                    "no --key-file given, and {} cannot be used",
                    args.config.display()
                )
            })?
            .audit
            .seal_key
            .with_context(|| {
                format!(
                    "no --key-file given, and {} sets no `audit.seal_key`",
                    args.config.display()
                )
            })?,
    };
    if path.exists() && !args.force {
        bail!(
            "{} exists: the agent seals with it; --force replaces it (its verification key then proves the stores sealed so far only)",
            path.display()
        );
    }
    let (verify_key, sealing_key) =
        VerifyKey::generate().context("drawing a key from the kernel's random source")?;
    write_key(&path, &sealing_key)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "key_file": path,
                "verify_key": verify_key.to_string(),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("sealing key written to {} (epoch 0)", path.display());
    println!();
    println!("verification key (shown once: write it down and keep it off this host):");
    println!();
    println!("    {verify_key}");
    println!();
    if std::io::stdout().is_terminal() {
        let code = QrCode::new(verify_key.to_string().as_bytes())
            .context("encoding the verification key as a QR code")?;
        println!("{}", code.render::<Dense1x2>().quiet_zone(true).build());
    }
    println!("The agent seals with the new key from its next start. Verify a store with:");
    println!(
        "    enforcer audit verify DIR --verify-key {verify_key} --key-file {}",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
