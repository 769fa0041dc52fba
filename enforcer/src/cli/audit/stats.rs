//! `enforcer audit stats`: who talked to whom. Top talkers (source to destination, by
//! flow count), denials by rule or reason, a segment-to-segment matrix of flows, and the
//! flows each policy generation decided. Flows are counted as attempts: a folded record
//! counts its `count`.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    process::ExitCode,
};

use serde::{Deserialize, Serialize};

use super::{StoreArgs, TimeRange};
use crate::audit::{compact, read, record::Record};
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

/// The fields of a record the figures use, borrowed from its line (the rest is skipped
/// unparsed).
#[derive(Deserialize)]
struct View<'a> {
    /// The attempts a folded flow record stands for (absent: one).
    #[serde(default)]
    count: Option<u64>,
    #[serde(borrow, default)]
    src_endpoint: Option<EndpointView<'a>>,
    #[serde(borrow, default)]
    actor: Option<ActorView<'a>>,
    #[serde(borrow)]
    unmapped: UnmappedView<'a>,
}

#[derive(Deserialize)]
struct EndpointView<'a> {
    #[serde(borrow, default)]
    ip: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ActorView<'a> {
    #[serde(borrow)]
    process: ProcessView<'a>,
}

#[derive(Deserialize)]
struct ProcessView<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct UnmappedView<'a> {
    #[serde(borrow, default)]
    flow: Option<FlowView<'a>>,
    #[serde(borrow, default)]
    gap: Option<GapView<'a>>,
}

#[derive(Deserialize)]
struct FlowView<'a> {
    #[serde(borrow)]
    verdict: Cow<'a, str>,
    #[serde(borrow)]
    reason: Cow<'a, str>,
    #[serde(borrow, default)]
    rule: Option<Cow<'a, str>>,
    #[serde(borrow)]
    src_segment: Cow<'a, str>,
    #[serde(borrow)]
    dst_segment: Cow<'a, str>,
    generation: u32,
    #[serde(borrow, default)]
    policy_sha256: Cow<'a, str>,
    #[serde(borrow, default)]
    cgroup: Cow<'a, str>,
}

#[derive(Deserialize)]
struct GapView<'a> {
    lost: u64,
    #[serde(borrow)]
    cause: Cow<'a, str>,
}

impl<'a> View<'a> {
    /// The view of a compact file's flow.
    fn of_flow(flow: &compact::FlowView<'a>) -> Self {
        let (src_segment, dst_segment) = flow.segments().unwrap_or_default();
        Self {
            count: Some(flow.attempts()),
            src_endpoint: flow.source().map(|(ip, _)| EndpointView {
                ip: ip.map_or(Cow::Borrowed(""), |ip| Cow::Owned(ip.to_string())),
            }),
            actor: flow.process_name().map(|name| ActorView {
                process: ProcessView {
                    name: Cow::Borrowed(name),
                },
            }),
            unmapped: UnmappedView {
                flow: flow.verdict().map(|verdict| FlowView {
                    verdict: Cow::Borrowed(verdict),
                    reason: Cow::Borrowed(flow.reason().unwrap_or_default()),
                    rule: flow.rule().map(Cow::Borrowed),
                    src_segment: Cow::Borrowed(src_segment),
                    dst_segment: Cow::Borrowed(dst_segment),
                    generation: flow.generation().unwrap_or_default(),
                    policy_sha256: Cow::Borrowed(flow.policy_sha256().unwrap_or_default()),
                    cgroup: Cow::Borrowed(flow.cgroup().unwrap_or_default()),
                }),
                gap: None,
            },
        }
    }

    /// The view of a whole record.
    fn of(record: &'a Record) -> Self {
        Self {
            count: record.count,
            src_endpoint: record.src_endpoint.as_ref().map(|end| EndpointView {
                ip: Cow::Borrowed(&end.ip),
            }),
            actor: record.actor.as_ref().map(|actor| ActorView {
                process: ProcessView {
                    name: Cow::Borrowed(&actor.process.name),
                },
            }),
            unmapped: UnmappedView {
                flow: record.flow().map(|flow| FlowView {
                    verdict: Cow::Borrowed(&flow.verdict),
                    reason: Cow::Borrowed(&flow.reason),
                    rule: flow.rule.as_deref().map(Cow::Borrowed),
                    src_segment: Cow::Borrowed(&flow.src_segment),
                    dst_segment: Cow::Borrowed(&flow.dst_segment),
                    generation: flow.generation,
                    policy_sha256: Cow::Borrowed(&flow.policy_sha256),
                    cgroup: Cow::Borrowed(&flow.cgroup),
                }),
                gap: record.unmapped.gap.as_ref().map(|gap| GapView {
                    lost: gap.lost,
                    cause: Cow::Borrowed(&gap.cause),
                }),
            },
        }
    }
}

/// The figures of part of the store (one file), merged into the whole in chain order.
#[derive(Default)]
struct Part {
    stats: Stats,
    /// `source \0 from \0 to` → its talker.
    talkers: HashMap<String, Talker>,
    /// A reused buffer for talker keys.
    key: String,
}

/// Adds `count` to `map[key]`, allocating the key only the first time.
fn bump(map: &mut BTreeMap<String, u64>, key: &str, count: u64) {
    match map.get_mut(key) {
        Some(total) => *total += count,
        None => {
            map.insert(key.to_owned(), count);
        }
    }
}

/// The denials `decided_by` made, allocating its name only the first time.
fn denials_of<'a>(stats: &'a mut Stats, decided_by: &str) -> &'a mut Denials {
    if !stats.denials.contains_key(decided_by) {
        stats
            .denials
            .insert(decided_by.to_owned(), Denials::default());
    }
    stats.denials.get_mut(decided_by).expect("inserted above")
}

impl Part {
    /// Counts one record.
    fn add(&mut self, item: read::Item<'_>) -> Result<(), serde_json::Error> {
        match item {
            read::Item::Line(line) => self.count(&serde_json::from_str(line)?),
            read::Item::Flow(flow) => self.count(&View::of_flow(&flow)),
            read::Item::Record(record) => self.count(&View::of(record)),
        }
        Ok(())
    }

    /// Counts the record `record` shows.
    fn count(&mut self, record: &View<'_>) {
        let stats = &mut self.stats;
        if let Some(gap) = &record.unmapped.gap {
            stats.lost += gap.lost;
            bump(&mut stats.lost_by_cause, &gap.cause, gap.lost);
        }
        let Some(flow) = &record.unmapped.flow else {
            return;
        };
        // A folded record counts every attempt it stands for.
        let attempts = record.count.unwrap_or(1);
        stats.flows += attempts;
        let source = match (&record.src_endpoint, &record.actor) {
            (Some(end), _) if !end.ip.is_empty() => end.ip.to_string(),
            (_, Some(actor)) => format!("{} ({})", actor.process.name, flow.cgroup),
            _ => String::new(),
        };
        self.key.clear();
        for part in [&*source, "\0", &flow.src_segment, "\0", &flow.dst_segment] {
            self.key.push_str(part);
        }
        if !self.talkers.contains_key(&self.key) {
            self.talkers.insert(
                self.key.clone(),
                Talker {
                    source,
                    from: flow.src_segment.to_string(),
                    to: flow.dst_segment.to_string(),
                    ..Talker::default()
                },
            );
        }
        let talker = self.talkers.get_mut(&self.key).expect("inserted above");
        talker.flows += attempts;
        let generation = stats.generations.entry(flow.generation).or_default();
        generation.flows += attempts;
        if generation.policy_sha256.is_empty() {
            generation.policy_sha256 = flow.policy_sha256.to_string();
        }
        let decided_by = flow.rule.as_deref().unwrap_or(&flow.reason);
        match &*flow.verdict {
            "deny" => {
                generation.denied += attempts;
                talker.denied += attempts;
                denials_of(stats, decided_by).deny += attempts;
            }
            "audit" => denials_of(stats, decided_by).audit += attempts,
            _ => {}
        }
        if !stats.matrix.contains_key(&*flow.src_segment) {
            stats
                .matrix
                .insert(flow.src_segment.to_string(), BTreeMap::new());
        }
        let row = stats
            .matrix
            .get_mut(&*flow.src_segment)
            .expect("inserted above");
        bump(row, &flow.dst_segment, attempts);
    }

    /// Adds a later part's figures to these.
    fn merge(&mut self, later: Self) {
        let (stats, more) = (&mut self.stats, later.stats);
        stats.flows += more.flows;
        stats.lost += more.lost;
        for (cause, lost) in more.lost_by_cause {
            *stats.lost_by_cause.entry(cause).or_default() += lost;
        }
        for (rule, counts) in more.denials {
            let total = stats.denials.entry(rule).or_default();
            total.deny += counts.deny;
            total.audit += counts.audit;
        }
        for (from, row) in more.matrix {
            let total = stats.matrix.entry(from).or_default();
            for (to, flows) in row {
                *total.entry(to).or_default() += flows;
            }
        }
        for (number, generation) in more.generations {
            let total = stats.generations.entry(number).or_default();
            total.flows += generation.flows;
            total.denied += generation.denied;
            // The first record that knew the policy's hash names it.
            if total.policy_sha256.is_empty() {
                total.policy_sha256 = generation.policy_sha256;
            }
        }
        for (key, talker) in later.talkers {
            let total = self.talkers.entry(key).or_insert_with(|| Talker {
                flows: 0,
                denied: 0,
                ..talker.clone()
            });
            total.flows += talker.flows;
            total.denied += talker.denied;
        }
    }
}

/// Counts the store's flows.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let dir = args.store.dir()?;
    let mut whole = Part::default();
    read::fold(
        &dir,
        args.time.since,
        args.time.until,
        Part::default,
        Part::add,
        |part| whole.merge(part),
    )?;
    let mut stats = whole.stats;
    let talkers = whole.talkers;
    let mut talkers: Vec<Talker> = talkers.into_values().collect();
    // Ties in the order of (source, from, to).
    talkers.sort_by(|a, b| {
        b.flows
            .cmp(&a.flows)
            .then_with(|| (&a.source, &a.from, &a.to).cmp(&(&b.source, &b.from, &b.to)))
    });
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
