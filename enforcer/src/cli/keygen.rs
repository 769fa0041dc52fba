//! `enforcer keygen PATH`: an ed25519 key pair for signing policy bundles, offline.

use std::{path::PathBuf, process::ExitCode};

use crate::policy::bundle::{key_id, keygen};

/// Arguments of `enforcer keygen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the private key; the public key goes to PATH.pub. Existing files are
    /// never overwritten.
    path: PathBuf,
    /// Print the key files and the key id as JSON.
    #[arg(long)]
    json: bool,
}

/// Writes the key pair and prints the public key's id.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut public = args.path.clone().into_os_string();
    public.push(".pub");
    let public = PathBuf::from(public);
    let key = keygen(&args.path, &public)?;
    if args.json {
        let report = serde_json::json!({
            "private_key": args.path,
            "public_key": public,
            "key_id": key_id(&key),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "private key {} (mode 0600, keep it off the agents), public key {}, key id {}",
        args.path.display(),
        public.display(),
        key_id(&key)
    );
    Ok(ExitCode::SUCCESS)
}
