//! `enforcer audit ...`: the SOC analyst's tools over the local audit store, one module
//! per subcommand.

mod export;
mod query;
mod setup_keys;
mod stats;
mod tail;
mod verify;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Subcommand;

use super::time;
use crate::{
    audit::{
        read::{self, Filter},
        record::{Kind, Record},
    },
    config::Config,
};

/// Audit subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the newest records, and with -f every new one as it is written.
    Tail(tail::Args),
    /// Find flows by time, segment, rule, verdict, address and port.
    Query(query::Args),
    /// Write what `query` finds as OCSF JSON Lines, CSV or Parquet, for a SIEM or a data
    /// lake.
    Export(export::Args),
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
        Command::Export(args) => export::run(args),
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

/// What `query` and `export` read: the store, the filters and the limit.
#[derive(Debug, clap::Args)]
pub struct Selection {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    time: TimeRange,
    /// Flows from or to this segment.
    #[arg(long)]
    segment: Option<String>,
    /// Flows decided by this rule id (or reason: default-deny, failsafe, ...).
    #[arg(long)]
    rule: Option<String>,
    /// Flows with this verdict.
    #[arg(long, value_parser = ["allow", "deny", "audit"])]
    verdict: Option<String>,
    /// Flows from or to this address.
    #[arg(long)]
    addr: Option<IpAddr>,
    /// Flows to or from this port.
    #[arg(long)]
    port: Option<u16>,
    /// Only records of this kind: flow, gap, agent (starts, stops, crash recovery,
    /// fail-closed), policy (applied, refused), open, seal, retention, epoch.
    #[arg(long, value_parser = parse_kind)]
    kind: Option<Kind>,
    /// At most this many records (the oldest first).
    #[arg(long)]
    limit: Option<usize>,
}

impl Selection {
    /// Calls `found` with each selected record of the store, oldest first: those the
    /// filters match (without `--kind`: flows, gaps and the agent's and the policies'
    /// history), at most `--limit`, until `found` returns `false`. When nothing matched, a
    /// `--segment` or `--rule` that no flow in the time range names is an error (a typo,
    /// most likely), with the closest name the flows do have. Returns how many records
    /// `found` took.
    fn scan(&self, mut found: impl FnMut(Record) -> bool) -> anyhow::Result<usize> {
        let dir = self.store.dir()?;
        let filter = Filter {
            since: self.time.since,
            until: self.time.until,
            segment: self.segment.clone(),
            rule: self.rule.clone(),
            verdict: self.verdict.clone(),
            addr: self.addr,
            port: self.port,
            store_records: true,
            kind: self.kind,
        };
        let limit = self.limit.unwrap_or(usize::MAX);
        let mut taken = 0;
        read::scan(
            &dir,
            &filter,
            |_| {},
            |record| {
                if self.kind.is_none() && !read::is_reportable(&record) {
                    return true;
                }
                taken += 1;
                found(record) && taken < limit
            },
        )?;
        if taken == 0 {
            self.unknown_names(&dir)?;
        }
        Ok(taken)
    }

    /// A `--segment` or `--rule` that no flow in the time range names, as an error.
    fn unknown_names(&self, dir: &Path) -> anyhow::Result<()> {
        if self.segment.is_none() && self.rule.is_none() {
            return Ok(());
        }
        let (segments, rules) = read::flow_names(dir, self.time.since, self.time.until)?;
        for (option, given, known) in [
            ("--segment", &self.segment, &segments),
            ("--rule", &self.rule, &rules),
        ] {
            if let Some(given) = given
                && !known.contains(given)
            {
                let closest = known
                    .iter()
                    .map(|name| (strsim::jaro_winkler(given, name), name))
                    .filter(|(score, _)| *score > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, name)| format!("; did you mean `{name}`?"))
                    .unwrap_or_default();
                anyhow::bail!(
                    "{option} {given}: no flow in the store{} names it{closest}",
                    if self.time.since.is_some() || self.time.until.is_some() {
                        " in that time range"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(())
    }
}

fn parse_kind(text: &str) -> Result<Kind, String> {
    text.parse()
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
