//! `enforcer audit query`: the flows that match, as a table or as the stored JSON lines.

use std::process::ExitCode;

use super::Selection;
use crate::audit::{
    export::write_json_line,
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
    selection: Selection,
    /// Print the matching records as stored (JSON Lines, OCSF).
    #[arg(long)]
    json: bool,
}

/// Runs the query.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
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
    let shown = args.selection.scan(|record| {
        if args.json {
            if let Err(err) = write_json_line(&mut out, &record) {
                write_error = Some(err);
                return false;
            }
        } else {
            table.add_row(row(&record));
        }
        true
    })?;
    if let Some(err) = write_error {
        return Err(err.into());
    }
    drop(out);
    if !args.json {
        print_table(&table);
        println!("{shown} records");
    }
    Ok(ExitCode::SUCCESS)
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
