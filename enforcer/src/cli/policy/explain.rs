//! `enforcer policy explain PATH --from X --to Y --port N/PROTO`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};

use enforcer_common::event::Verdict;

use super::{EXIT_DIFFERENT, load_or_report, local};
use crate::policy::{
    explain::{explain, parse_endpoint},
    lookup::ImageIndex,
    model::PortRange,
};

/// Arguments of `enforcer policy explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy file or directory.
    path: PathBuf,
    /// Source: a segment name, an IP address, or a cgroup path.
    #[arg(long)]
    from: String,
    /// Destination: a segment name, an IP address, or a cgroup path.
    #[arg(long)]
    to: String,
    /// Destination port and protocol, e.g. 8443/tcp.
    #[arg(long)]
    port: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    host: local::HostArgs,
}

/// Prints the verdict, the reason and how each side was classified; exits 0 when the flow
/// passes, 1 when it is denied.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let compiled = match load_or_report(std::slice::from_ref(&args.path))? {
        Ok(compiled) => compiled,
        Err(code) => return Ok(code),
    };
    let port: PortRange = args
        .port
        .parse()
        .with_context(|| format!("--port {}", args.port))?;
    if port.first != port.last {
        bail!("--port takes one port, not the range {port}");
    }
    let local = local::addresses(&args.host)?;
    let from = local.mark(parse_endpoint(&args.from, &compiled.image).context("--from")?);
    let to = local.mark(parse_endpoint(&args.to, &compiled.image).context("--to")?);
    let index = ImageIndex::new(&compiled.image);
    let answer = explain(
        &index,
        (&from, &args.from),
        (&to, &args.to),
        port.proto,
        port.first,
    );
    // Exit 0 when the flow passes (allowed, or let through by audit mode), 1 when it
    // is denied: a CI job can gate on it.
    let code = if answer.verdict == Verdict::Deny.word() {
        ExitCode::from(EXIT_DIFFERENT)
    } else {
        ExitCode::SUCCESS
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(code);
    }
    let why = match (&answer.rule, &answer.failsafe) {
        (Some(rule), _) => format!("rule {rule}"),
        (None, Some(failsafe)) => format!("failsafe {failsafe}"),
        (None, None) => answer.reason.to_owned(),
    };
    println!("verdict: {} ({why})", answer.verdict);
    println!(
        "from:    {} -> segment {} ({})",
        answer.from.given, answer.from.segment, answer.from.because
    );
    println!(
        "to:      {} -> segment {} ({})",
        answer.to.given, answer.to.segment, answer.to.because
    );
    println!("port:    {}", answer.port);
    Ok(code)
}
