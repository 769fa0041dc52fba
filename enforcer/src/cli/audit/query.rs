//! `enforcer audit query`: the flows that match, as a table or as the stored JSON lines.

use std::{io::Write as _, net::IpAddr, process::ExitCode};

use super::{StoreArgs, TimeRange};
use crate::audit::{
    read::{self, Filter},
    record::{Kind, Record},
};
use crate::cli::{
    table::{print_table, table},
    time,
};

/// Arguments of `enforcer audit query`.
#[derive(Debug, clap::Args)]
pub struct Args {
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
    /// Print at most this many records (the oldest first).
    #[arg(long)]
    limit: Option<usize>,
    /// Print the matching records as stored (JSON Lines, OCSF).
    #[arg(long)]
    json: bool,
}

/// Runs the query.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let dir = args.store.dir()?;
    let filter = Filter {
        since: args.time.since,
        until: args.time.until,
        segment: args.segment.clone(),
        rule: args.rule.clone(),
        verdict: args.verdict.clone(),
        addr: args.addr,
        port: args.port,
        store_records: true,
        kind: args.kind,
    };
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut shown = 0;
    let mut table = table(&[
        "time",
        "verdict",
        "from",
        "source",
        "to",
        "destination",
        "rule",
        "process",
    ]);
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    read::scan(
        &dir,
        &filter,
        |_| {},
        |record| {
            if args.kind.is_none() && !read::is_reportable(&record) {
                return true;
            }
            shown += 1;
            if args.json {
                if let Err(err) = serde_json::to_writer(&mut out, &record)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"))
                {
                    write_error = Some(err);
                    return false;
                }
            } else {
                table.add_row(row(&record));
            }
            shown < limit
        },
    )?;
    if let Some(err) = write_error {
        return Err(err.into());
    }
    drop(out);
    if shown == 0 {
        unknown_names(args, &dir)?;
    }
    if !args.json {
        print_table(&table);
        println!("{shown} records");
    }
    Ok(ExitCode::SUCCESS)
}

/// When nothing matched: a `--segment` or `--rule` that no flow in the time range names
/// is an error (a typo, most likely), with the closest name the flows do have.
fn unknown_names(args: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    if args.segment.is_none() && args.rule.is_none() {
        return Ok(());
    }
    let (segments, rules) = read::flow_names(dir, args.time.since, args.time.until)?;
    for (option, given, known) in [
        ("--segment", &args.segment, &segments),
        ("--rule", &args.rule, &rules),
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
                if args.time.since.is_some() || args.time.until.is_some() {
                    " in that time range"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

fn parse_kind(text: &str) -> Result<Kind, String> {
    text.parse()
}

fn row(record: &Record) -> Vec<String> {
    let Some(flow) = record.flow() else {
        return vec![
            time::format(record.time),
            match record.unmapped.kind {
                Kind::Gap => "GAP".to_owned(),
                other => other.word().to_owned(),
            },
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            record.message.clone(),
        ];
    };
    let end = |end: &Option<crate::audit::record::Endpoint>| {
        end.as_ref()
            .map_or_else(String::new, |end| format!("{} {}", end.ip, end.port))
            .trim()
            .to_owned()
    };
    vec![
        time::format(record.time),
        flow.verdict.clone(),
        flow.src_segment.clone(),
        end(&record.src_endpoint),
        flow.dst_segment.clone(),
        end(&record.dst_endpoint),
        flow.rule.clone().unwrap_or_else(|| flow.reason.clone()),
        record.actor.as_ref().map_or_else(String::new, |actor| {
            format!("{} ({})", actor.process.name, actor.process.pid)
        }),
    ]
}
