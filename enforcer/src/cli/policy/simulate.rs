//! `enforcer policy simulate CANDIDATE --audit-dir DIR`: what would change verdict if the
//! candidate were applied, judged on the flows the store recorded, each change named by
//! what it does: `closed`, `denied once enforced` (let through by audit mode, denied by
//! the candidate), `opened`, `now audited`, `now allowed`.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use indicatif::{ProgressBar, ProgressStyle};

use super::{load_or_report, local};
use crate::cli::{
    table::{print_table, table},
    time,
};
use crate::{
    audit::{
        read::{self, Filter},
        replay::{ChangeKind, Simulator},
    },
    policy::lookup::ImageIndex,
};

/// Arguments of `enforcer policy simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The candidate policy file or directory.
    candidate: PathBuf,
    /// The audit store whose flows are replayed.
    #[arg(long)]
    audit_dir: PathBuf,
    /// Only flows at or after this time: RFC 3339, or an age such as 15m or 2h.
    #[arg(long, value_parser = time::parse)]
    since: Option<i64>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// For records written before records named local destinations: the addresses of
    /// the host that recorded them.
    #[command(flatten)]
    host: local::HostArgs,
}

/// Replays the store under the candidate.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let compiled = match load_or_report(std::slice::from_ref(&args.candidate))? {
        Ok(compiled) => compiled,
        Err(code) => return Ok(code),
    };
    let local = local::addresses(&args.host)?;
    let mut simulator = Simulator::new(ImageIndex::new(&compiled.image), local);
    let total: u64 = read::segments(&args.audit_dir)?
        .iter()
        .map(|file| std::fs::metadata(&file.path).map_or(0, |m| m.len()))
        .sum();
    // Drawn only on a terminal; a large store takes a while.
    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {eta} left")
            .expect("a valid template"),
    );
    let filter = Filter {
        since: args.since,
        ..Filter::default()
    };
    read::scan(
        &args.audit_dir,
        &filter,
        |bytes| progress.inc(bytes),
        |record| {
            simulator.replay(&record);
            true
        },
    )?;
    progress.finish_and_clear();
    let replay = simulator.replay;
    if args.json {
        let changes: Vec<_> = replay
            .changes
            .iter()
            .map(|(change, flows)| serde_json::json!({ "change": change, "flows": flows }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "replayed": replay.replayed,
                "unchanged": replay.unchanged,
                "skipped": replay.skipped,
                "changes": changes,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let changed: u64 = replay.changes.values().sum();
    let mut by_kind: BTreeMap<ChangeKind, u64> = BTreeMap::new();
    for (change, flows) in &replay.changes {
        *by_kind.entry(change.kind).or_default() += flows;
    }
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(kind, flows)| format!("{flows} {}", kind.words()))
        .collect();
    println!(
        "{} flows replayed: {changed} would change verdict{}, {} would not ({} records not replayable)",
        replay.replayed,
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        },
        replay.unchanged,
        replay.skipped
    );
    if changed > 0 {
        let mut changes = table(&[
            "change", "from", "to", "port", "was", "by", "becomes", "by", "flows",
        ]);
        for (change, flows) in &replay.changes {
            changes.add_row([
                change.kind.words().to_owned(),
                change.from.clone(),
                change.to.clone(),
                change.port.clone(),
                change.was.clone(),
                change.was_by.clone(),
                change.becomes.clone(),
                change.becomes_by.clone(),
                flows.to_string(),
            ]);
        }
        print_table(&changes);
    }
    Ok(ExitCode::SUCCESS)
}
