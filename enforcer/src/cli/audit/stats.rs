//! `enforcer audit stats`: who talked to whom. Top talkers (source to destination, by
//! flow count), denials by rule or reason, a segment-to-segment matrix of flows, and the
//! flows each policy generation decided.

use std::{collections::BTreeMap, process::ExitCode};

use serde::Serialize;

use super::{StoreArgs, TimeRange};
use crate::audit::read::{self, Filter};
use crate::cli::table::{print_table, table};

/// Arguments of `enforcer audit stats`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    time: TimeRange,
    /// How many top talkers to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    flows: u64,
    lost: u64,
    /// Gap cause → events lost.
    lost_by_cause: BTreeMap<String, u64>,
    /// (source address, source segment, destination segment) → flows, allowed, denied.
    talkers: Vec<Talker>,
    /// Rule or reason → denials (and audit-mode would-be denials).
    denials: BTreeMap<String, Denials>,
    /// Source segment → destination segment → flows.
    matrix: BTreeMap<String, BTreeMap<String, u64>>,
    /// Policy generation → the flows it decided.
    generations: BTreeMap<u32, Generation>,
}

/// The flows one policy generation decided.
#[derive(Debug, Default, Serialize)]
struct Generation {
    /// SHA-256 of its policy files (empty when the record did not know it).
    policy_sha256: String,
    flows: u64,
    denied: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Talker {
    source: String,
    from: String,
    to: String,
    flows: u64,
    denied: u64,
}

#[derive(Debug, Default, Serialize)]
struct Denials {
    deny: u64,
    audit: u64,
}

/// Counts the store's flows.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let dir = args.store.dir()?;
    let filter = Filter {
        since: args.time.since,
        until: args.time.until,
        store_records: true,
        ..Filter::default()
    };
    let mut stats = Stats::default();
    let mut talkers: BTreeMap<(String, String, String), Talker> = BTreeMap::new();
    read::scan(
        &dir,
        &filter,
        |_| {},
        |record| {
            if let Some(gap) = &record.unmapped.gap {
                stats.lost += gap.lost;
                *stats.lost_by_cause.entry(gap.cause.clone()).or_default() += gap.lost;
            }
            let Some(flow) = record.flow() else {
                return true;
            };
            stats.flows += 1;
            let source = record
                .src_endpoint
                .as_ref()
                .map(|end| end.ip.clone())
                .filter(|ip| !ip.is_empty())
                .or_else(|| {
                    record
                        .actor
                        .as_ref()
                        .map(|actor| format!("{} ({})", actor.process.name, flow.cgroup))
                })
                .unwrap_or_default();
            let key = (
                source.clone(),
                flow.src_segment.clone(),
                flow.dst_segment.clone(),
            );
            let talker = talkers.entry(key).or_insert_with(|| Talker {
                source,
                from: flow.src_segment.clone(),
                to: flow.dst_segment.clone(),
                ..Talker::default()
            });
            talker.flows += 1;
            let generation = stats.generations.entry(flow.generation).or_default();
            generation.flows += 1;
            if generation.policy_sha256.is_empty() {
                generation.policy_sha256.clone_from(&flow.policy_sha256);
            }
            let decided_by = flow.rule.clone().unwrap_or_else(|| flow.reason.clone());
            match flow.verdict.as_str() {
                "deny" => {
                    generation.denied += 1;
                    talker.denied += 1;
                    stats.denials.entry(decided_by).or_default().deny += 1;
                }
                "audit" => stats.denials.entry(decided_by).or_default().audit += 1,
                _ => {}
            }
            *stats
                .matrix
                .entry(flow.src_segment.clone())
                .or_default()
                .entry(flow.dst_segment.clone())
                .or_default() += 1;
            true
        },
    )?;
    let mut talkers: Vec<Talker> = talkers.into_values().collect();
    talkers.sort_by(|a, b| b.flows.cmp(&a.flows).then_with(|| a.source.cmp(&b.source)));
    talkers.truncate(args.top);
    stats.talkers = talkers;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(ExitCode::SUCCESS);
    }
    let causes: Vec<String> = stats
        .lost_by_cause
        .iter()
        .map(|(cause, count)| format!("{count} {cause}"))
        .collect();
    println!(
        "{} flows, {} events recorded as lost{}",
        stats.flows,
        stats.lost,
        if causes.is_empty() {
            String::new()
        } else {
            format!(" ({})", causes.join(", "))
        }
    );
    let mut top = table(&["source", "from", "to", "flows", "denied"]);
    for talker in &stats.talkers {
        top.add_row([
            talker.source.clone(),
            talker.from.clone(),
            talker.to.clone(),
            talker.flows.to_string(),
            talker.denied.to_string(),
        ]);
    }
    println!("\nTop talkers");
    print_table(&top);
    let mut denials = table(&["rule or reason", "denied", "would deny (audit mode)"]);
    for (rule, counts) in &stats.denials {
        denials.add_row([
            rule.clone(),
            counts.deny.to_string(),
            counts.audit.to_string(),
        ]);
    }
    println!("\nDenials by rule");
    print_table(&denials);
    let columns: Vec<String> = {
        let mut all: Vec<String> = stats
            .matrix
            .values()
            .flat_map(|row| row.keys().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    };
    let header: Vec<&str> = std::iter::once("from \\ to")
        .chain(columns.iter().map(String::as_str))
        .collect();
    let mut matrix = table(&header);
    for (from, row) in &stats.matrix {
        matrix.add_row(
            std::iter::once(from.clone()).chain(
                columns
                    .iter()
                    .map(|to| row.get(to).map_or_else(|| "·".to_owned(), u64::to_string)),
            ),
        );
    }
    println!("\nFlows, segment to segment");
    print_table(&matrix);
    let mut generations = table(&["generation", "policy (sha256)", "flows", "denied"]);
    for (number, generation) in &stats.generations {
        generations.add_row([
            number.to_string(),
            generation.policy_sha256.chars().take(12).collect(),
            generation.flows.to_string(),
            generation.denied.to_string(),
        ]);
    }
    println!("\nFlows by policy generation");
    print_table(&generations);
    Ok(ExitCode::SUCCESS)
}
