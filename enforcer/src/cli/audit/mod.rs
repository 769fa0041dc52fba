//! `enforcer audit ...`: the SOC analyst's tools over the local audit store, one module
//! per subcommand.

mod query;
mod setup_keys;
mod stats;
mod tail;
mod verify;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Subcommand;

use super::time;
use crate::{
    audit::record::{Kind, Record},
    config::Config,
};

/// Audit subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the newest records, and with -f every new one as it is written.
    Tail(tail::Args),
    /// Find flows by time, segment, rule, verdict, address and port.
    Query(query::Args),
    /// Check a store's hash chain, seals and files; name the first broken record.
    Verify(verify::Args),
    /// Top talkers, denials by rule, and a segment-to-segment matrix.
    Stats(stats::Args),
    /// Create the forward-secure sealing key and show its verification key once.
    SetupKeys(setup_keys::Args),
}

/// Runs an audit subcommand.
pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Tail(args) => tail::run(args),
        Command::Query(args) => query::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Stats(args) => stats::run(args),
        Command::SetupKeys(args) => setup_keys::run(args),
    }
}

/// Where the store is: `--dir`, else the agent config's `audit.dir`.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The audit store directory (default: `audit.dir` of the agent's config).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The agent's config file, read when --dir is not given.
    #[arg(long, default_value = crate::config::DEFAULT_PATH)]
    config: PathBuf,
}

impl StoreArgs {
    /// The store directory.
    fn dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.dir {
            return Ok(dir.clone());
        }
        let config = Config::load(&self.config).with_context(|| {
            format!(
                "no --dir given, and {} cannot be used",
                self.config.display()
            )
        })?;
        Ok(config.audit.dir)
    }
}

/// `--since` and `--until`.
#[derive(Debug, clap::Args)]
pub struct TimeRange {
    /// Records at or after this time: RFC 3339, or an age such as 15m or 2h.
    #[arg(long, value_parser = time::parse)]
    since: Option<i64>,
    /// Records before this time: RFC 3339, or an age such as 15m or 2h.
    #[arg(long, value_parser = time::parse)]
    until: Option<i64>,
}

/// One record as one line for people.
fn format_line(record: &Record) -> String {
    let time = time::format(record.time);
    match (record.unmapped.kind, record.flow()) {
        (Kind::Flow, Some(flow)) => {
            let src = record.src_endpoint.as_ref();
            let dst = record.dst_endpoint.as_ref();
            let endpoint = |end: Option<&crate::audit::record::Endpoint>| {
                end.map_or_else(String::new, |end| {
                    crate::audit::record::Endpoint::address_and_port(&end.ip, end.port)
                })
            };
            // A protocol without a name is shown by its number.
            let protocol = record
                .connection_info
                .as_ref()
                .map_or_else(String::new, |info| {
                    if info.protocol_name.is_empty() {
                        info.protocol_num.to_string()
                    } else {
                        info.protocol_name.clone()
                    }
                });
            let process = record.actor.as_ref().map_or_else(String::new, |actor| {
                format!(" pid={} comm={}", actor.process.pid, actor.process.name)
            });
            format!(
                "{time} {:<5} {} {} -> {} {}/{protocol} by {}{process}",
                flow.verdict,
                flow.src_segment,
                endpoint(src),
                flow.dst_segment,
                endpoint(dst),
                flow.rule.as_deref().unwrap_or(&flow.reason),
            )
        }
        _ => format!(
            "{time} [{}] {}",
            kind_word(record.unmapped.kind),
            record.message
        ),
    }
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Gap => "GAP",
        other => other.word(),
    }
}
