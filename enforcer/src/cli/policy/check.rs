//! `enforcer policy check PATH...`.

use std::{path::PathBuf, process::ExitCode};

use enforcer_common::maps::{
    MAX_CGROUPS, MAX_CIDRS_V4, MAX_CIDRS_V6, MAX_FAILSAFES, MAX_LISTEN_PORTS, MAX_RULE_ENTRIES,
    MAX_SEGMENTS,
};
use serde::Serialize;

use super::{EXIT_INVALID, print_diagnostics};
use crate::cli::table::{print_table, table};
use crate::policy::{
    Compiled, PolicyError, compile_sources,
    diagnostic::DiagnosticJson,
    model::{Action, BROADCAST, MULTICAST, Mode, Segment, SegmentRef},
    source::SourceSet,
};

/// Arguments of `enforcer policy check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy files or directories (a directory's *.toml files merge, in name order).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct MapFill {
    map: &'static str,
    entries: usize,
    capacity: u32,
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_sha256: Option<String>,
    segments: usize,
    rules: usize,
    failsafes: Vec<String>,
    maps: Vec<MapFill>,
    diagnostics: Vec<DiagnosticJson>,
}

fn fills(compiled: &Compiled) -> Vec<MapFill> {
    let image = &compiled.image;
    let fill = |map, entries, capacity| MapFill {
        map,
        entries,
        capacity,
    };
    vec![
        fill("segments", image.segment_names.len(), MAX_SEGMENTS),
        fill("cidrs_v4", image.cidrs_v4.len(), MAX_CIDRS_V4),
        fill("cidrs_v6", image.cidrs_v6.len(), MAX_CIDRS_V6),
        fill("cgroups", image.cgroups.len(), MAX_CGROUPS),
        fill("listen_ports", image.listen_ports.len(), MAX_LISTEN_PORTS),
        fill("rules", image.rules.len(), MAX_RULE_ENTRIES),
        fill("failsafes_v4", image.failsafes_v4.len(), MAX_FAILSAFES),
        fill("failsafes_v6", image.failsafes_v6.len(), MAX_FAILSAFES),
    ]
}

fn failsafe_lines(compiled: &Compiled) -> Vec<String> {
    compiled
        .policy
        .failsafes
        .iter()
        .map(|f| {
            let from: Vec<String> = f.from.iter().map(ToString::to_string).collect();
            format!("{}: {} from {}", f.name, f.ports, from.join(", "))
        })
        .collect()
}

fn print_summary(compiled: &Compiled) {
    let policy = &compiled.policy;
    println!(
        "policy OK: {} file(s), {} segment(s), {} rule(s), image sha256 {}",
        compiled.sources.files.len(),
        policy.segments.len(),
        policy.rules.len(),
        compiled.image.digest_hex()
    );
    let failsafes = failsafe_lines(compiled);
    if failsafes.is_empty() {
        println!("failsafe access: NONE (no management access is exempt from the rules)");
    } else {
        println!("failsafe access (always allowed, whatever the rules say):");
        for line in failsafes {
            println!("  {line}");
        }
    }
    for class in [BROADCAST, MULTICAST] {
        let allowed: Vec<&str> = policy
            .rules
            .iter()
            .filter(|r| r.action == Action::Allow)
            .filter(|r| {
                r.to.iter()
                    .any(|to| matches!(to, SegmentRef::Named(n) if n == class))
            })
            .map(|r| r.id.as_str())
            .collect();
        if allowed.is_empty() {
            println!(
                "{class} destinations: denied (no allow rule names `{class}`; `*` does not cover it)"
            );
        } else {
            println!(
                "{class} destinations: allowed only by {}",
                allowed.join(", ")
            );
        }
    }
    println!();
    let mut segments = table(&["segment", "mode", "cgroups", "cidrs", "ports", "grants"]);
    for s in &policy.segments {
        segments.add_row(vec![
            s.name.clone(),
            match s.mode {
                Mode::Enforce => "enforce".into(),
                Mode::Audit => "AUDIT".into(),
            },
            s.cgroups.len().to_string(),
            s.cidrs.len().to_string(),
            s.ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            grants(s),
        ]);
    }
    print_table(&segments);
    println!();
    let mut rules = table(&["#", "rule", "action", "from", "to", "ports"]);
    for (i, r) in policy.rules.iter().enumerate() {
        let list = |refs: &[SegmentRef]| {
            refs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        rules.add_row(vec![
            (i + 1).to_string(),
            r.id.clone(),
            match r.action {
                Action::Allow => "allow".into(),
                Action::Deny => "deny".into(),
            },
            list(&r.from),
            list(&r.to),
            r.ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    print_table(&rules);
    println!();
    let mut maps = table(&["map", "entries", "capacity", "fill"]);
    for fill in fills(compiled) {
        let percent = fill.entries as f64 * 100.0 / f64::from(fill.capacity);
        maps.add_row(vec![
            fill.map.to_owned(),
            fill.entries.to_string(),
            fill.capacity.to_string(),
            format!("{percent:.2}%"),
        ]);
    }
    print_table(&maps);
}

/// Validates and summarises; exit 0 when the policy compiles (warnings allowed), 2 when not.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let sources = SourceSet::load(&args.paths).map_err(PolicyError::from)?;
    let files: Vec<String> = sources.files.iter().map(|f| f.path.clone()).collect();
    match compile_sources(sources) {
        Ok(compiled) => {
            if args.json {
                let report = Report {
                    ok: true,
                    files,
                    image_sha256: Some(compiled.image.digest_hex()),
                    segments: compiled.policy.segments.len(),
                    rules: compiled.policy.rules.len(),
                    failsafes: failsafe_lines(&compiled),
                    maps: fills(&compiled),
                    diagnostics: compiled
                        .warnings
                        .iter()
                        .map(|d| d.to_json(&compiled.sources))
                        .collect(),
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_diagnostics(&compiled.sources, &compiled.warnings);
                print_summary(&compiled);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(rejected) => {
            if args.json {
                let report = Report {
                    ok: false,
                    files,
                    image_sha256: None,
                    segments: 0,
                    rules: 0,
                    failsafes: Vec::new(),
                    maps: Vec::new(),
                    diagnostics: rejected
                        .diagnostics
                        .iter()
                        .map(|d| d.to_json(&rejected.sources))
                        .collect(),
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_diagnostics(&rejected.sources, &rejected.diagnostics);
                let errors = rejected.diagnostics.iter().filter(|d| d.is_error()).count();
                eprintln!("policy rejected: {errors} error(s); nothing was compiled");
            }
            Ok(ExitCode::from(EXIT_INVALID))
        }
    }
}

/// What `segment` is granted beyond its rules, for the segments table.
fn grants(segment: &Segment) -> String {
    let granted: Vec<&str> = [
        (segment.raw_sockets, "raw_sockets"),
        (segment.icmp_errors, "icmp_errors"),
    ]
    .into_iter()
    .filter_map(|(granted, name)| granted.then_some(name))
    .collect();
    if granted.is_empty() {
        "-".into()
    } else {
        granted.join(", ")
    }
}
