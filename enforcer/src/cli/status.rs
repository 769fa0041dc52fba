//! `enforcer status [--json]`: what the kernel enforces, read from the pins (so it works
//! while the agent is down), and what the agent last said.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use serde::Serialize;

use crate::{
    agent::state::{ActivePolicy, Reload, StateDir},
    cli::{table, time},
    config::Config,
    host,
    loader::{EventCounts, MapFill, PinLayout, PinnedMaps, sys::LinkTarget},
};

/// Exit code when nothing is enforced (no pins, or no policy applied).
const EXIT_NOT_ENFORCING: u8 = 3;

/// Arguments of `enforcer status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's config file (for its pin and state directories).
    #[arg(long, default_value = crate::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Status {
    agent_running: bool,
    agent_pid: Option<u32>,
    pin_dir: PathBuf,
    installed: bool,
    generation: u32,
    policy: Option<ActivePolicy>,
    last_reload: Option<Reload>,
    attachments: Vec<Attachment>,
    interfaces: Vec<InterfaceStatus>,
    maps: Vec<MapFill>,
    rules: Vec<RuleStatus>,
    reasons: Vec<ReasonStatus>,
    events: Events,
}

#[derive(Debug, Serialize)]
struct Attachment {
    pin: String,
    link_id: Option<u32>,
    program_id: Option<u32>,
    target: String,
    error: Option<String>,
}

/// One interface of this host and its XDP ingress.
#[derive(Debug, Serialize)]
struct InterfaceStatus {
    name: String,
    index: u32,
    /// `attached`, `failed` or `none`.
    xdp: &'static str,
    /// The mode asked for, while attached or failed.
    mode: Option<String>,
    /// Why attaching failed.
    error: Option<String>,
}

/// Every interface of this host with what the agent last reported for it and whether
/// its XDP link is pinned.
fn interfaces(
    state: Option<&crate::agent::state::AgentState>,
    attachments: &[Attachment],
    pins: &PinLayout,
) -> anyhow::Result<Vec<InterfaceStatus>> {
    let reported = state.map(|s| &s.interfaces);
    let mut found = Vec::new();
    for (name, index) in host::interfaces::all()? {
        let known = reported.and_then(|r| r.get(&name));
        let pin = pins.xdp_link(&name);
        let pinned = attachments.iter().any(|a| {
            a.error.is_none()
                && pin
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy() == a.pin)
        });
        let (xdp, mode, error) = match known {
            Some(known) if known.error.is_some() => {
                ("failed", Some(known.mode.clone()), known.error.clone())
            }
            Some(known) if pinned => ("attached", Some(known.mode.clone()), None),
            _ if pinned => ("attached", None, None),
            _ => ("none", None, None),
        };
        found.push(InterfaceStatus {
            name,
            index,
            xdp,
            mode,
            error,
        });
    }
    Ok(found)
}

#[derive(Debug, Serialize)]
struct RuleStatus {
    id: u32,
    name: String,
    allow: u64,
    deny: u64,
    audit: u64,
}

#[derive(Debug, Serialize)]
struct ReasonStatus {
    reason: &'static str,
    verdict: &'static str,
    count: u64,
}

#[derive(Debug, Default, Serialize)]
struct Events {
    emitted: u64,
    lost: u64,
    suppressed: u64,
    unstored: u64,
}

impl From<EventCounts> for Events {
    fn from(counts: EventCounts) -> Self {
        Self {
            emitted: counts.emitted,
            lost: counts.lost,
            suppressed: counts.suppressed,
            unstored: counts.unstored,
        }
    }
}

fn interface_name(index: u32) -> String {
    host::interfaces::name(index).map_or_else(
        || format!("interface #{index} (gone)"),
        |name| format!("interface {name}"),
    )
}

fn target(target: LinkTarget, cgroup: Option<(&Path, u64)>) -> String {
    match target {
        LinkTarget::Cgroup(id) => match cgroup {
            Some((path, configured)) if configured == id => format!("cgroup {}", path.display()),
            _ => format!("cgroup id {id}"),
        },
        LinkTarget::Xdp(index) => interface_name(index),
        LinkTarget::Other => "another kind of link".to_owned(),
    }
}

fn gather(config: &Config) -> anyhow::Result<Status> {
    let state_dir = StateDir::new(&config.state_dir);
    let agent_running = state_dir.agent_running();
    let state = state_dir.read();
    let pins = PinLayout::new(&config.pin_dir);
    let cgroup = host::cgroup2_mount()
        .ok()
        .map(|root| root.join(&config.cgroup))
        .and_then(|path| host::cgroups::id(&path).map(|id| (path, id)));
    let attachments: Vec<Attachment> = pins
        .links()?
        .into_iter()
        .map(|link| match link.details {
            Ok(details) => Attachment {
                pin: link.name,
                link_id: Some(details.id),
                program_id: Some(details.program_id),
                target: target(
                    details.target,
                    cgroup.as_ref().map(|(p, id)| (p.as_path(), *id)),
                ),
                error: None,
            },
            Err(err) => Attachment {
                pin: link.name,
                link_id: None,
                program_id: None,
                target: String::new(),
                error: Some(err),
            },
        })
        .collect();
    let interfaces = interfaces(state.as_ref(), &attachments, &pins)?;
    let mut status = Status {
        agent_running,
        agent_pid: state.as_ref().filter(|_| agent_running).map(|s| s.pid),
        pin_dir: config.pin_dir.clone(),
        installed: pins.has_maps(),
        generation: 0,
        policy: state.as_ref().and_then(|s| s.active.clone()),
        last_reload: state.as_ref().and_then(|s| s.last_reload.clone()),
        attachments,
        interfaces,
        maps: Vec::new(),
        rules: Vec::new(),
        reasons: Vec::new(),
        events: Events::default(),
    };
    if status.installed {
        let mut maps = PinnedMaps::open(&pins.maps_dir())?;
        let counters = maps.counters()?;
        status.generation = counters.generation;
        status.maps = maps.map_fill()?;
        let names = state_dir.rule_names();
        status.rules = counters
            .rules
            .iter()
            .zip(1..)
            .map(|(counts, id)| RuleStatus {
                id,
                name: names
                    .get(id as usize - 1)
                    .cloned()
                    .unwrap_or_else(|| format!("rule-{id}")),
                allow: counts.allow,
                deny: counts.deny,
                audit: counts.audit,
            })
            .collect();
        status.reasons = counters
            .by_reason
            .iter()
            .filter(|count| count.count > 0)
            .map(|count| ReasonStatus {
                reason: count.reason.word(),
                verdict: count.verdict.word(),
                count: count.count,
            })
            .collect();
        status.events = counters.events.into();
    }
    Ok(status)
}

fn print(status: &Status) {
    let agent = match (status.agent_running, status.agent_pid) {
        (true, Some(pid)) => format!("running (pid {pid})"),
        (true, None) => "running".to_owned(),
        (false, _) if status.installed => {
            "not running (enforcement continues from the pins)".to_owned()
        }
        (false, _) => "not running".to_owned(),
    };
    println!("agent:        {agent}");
    if !status.installed {
        println!(
            "enforcement:  none (nothing pinned in {})",
            status.pin_dir.display()
        );
        return;
    }
    match &status.policy {
        Some(policy) if policy.generation == status.generation => println!(
            "policy:       generation {} (sources sha256 {}, image sha256 {}{}), applied {}",
            status.generation,
            &policy.source_sha256[..16.min(policy.source_sha256.len())],
            &policy.image_sha256[..16.min(policy.image_sha256.len())],
            policy
                .bundle_version
                .map_or_else(String::new, |v| format!(", bundle version {v}")),
            time::with_age(policy.applied_at)
        ),
        _ => println!("policy:       generation {}", status.generation),
    }
    if let Some(reload) = &status.last_reload {
        let message = reload
            .message
            .as_deref()
            .map_or_else(String::new, |m| format!(": {m}"));
        println!(
            "last reload:  {} ({}, at {}){message}",
            reload.outcome.word(),
            reload.trigger,
            time::with_age(reload.at)
        );
    }
    println!("attached:");
    let mut table = table::table(&["pin", "link", "program", "target"]);
    for attachment in &status.attachments {
        let id = |value: Option<u32>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
        table.add_row(vec![
            attachment.pin.clone(),
            id(attachment.link_id),
            id(attachment.program_id),
            attachment
                .error
                .clone()
                .unwrap_or_else(|| attachment.target.clone()),
        ]);
    }
    table::print_table(&table);
    println!("interfaces:");
    let mut table = table::table(&["interface", "index", "xdp", "mode"]);
    for interface in &status.interfaces {
        table.add_row(vec![
            interface.name.clone(),
            interface.index.to_string(),
            match &interface.error {
                Some(error) => format!("failed: {error}"),
                None => interface.xdp.to_owned(),
            },
            interface.mode.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table::print_table(&table);
    println!("maps:");
    let mut table = table::table(&["map", "entries", "limit"]);
    for map in &status.maps {
        table.add_row(vec![
            map.map.to_owned(),
            map.entries.to_string(),
            map.limit.to_string(),
        ]);
    }
    table::print_table(&table);
    println!("rules (active generation):");
    let mut table = table::table(&["id", "rule", "allow", "deny", "audit"]);
    for rule in &status.rules {
        table.add_row(vec![
            rule.id.to_string(),
            rule.name.clone(),
            rule.allow.to_string(),
            rule.deny.to_string(),
            rule.audit.to_string(),
        ]);
    }
    table::print_table(&table);
    println!("decisions by reason:");
    let mut table = table::table(&["reason", "verdict", "count"]);
    for reason in &status.reasons {
        table.add_row(vec![
            reason.reason.to_owned(),
            reason.verdict.to_owned(),
            reason.count.to_string(),
        ]);
    }
    table::print_table(&table);
    println!(
        "events:       {} emitted, {} lost, {} suppressed as duplicates, {} not yet stored",
        status.events.emitted, status.events.lost, status.events.suppressed, status.events.unstored
    );
}

/// Prints the status; exits 3 when nothing is enforced.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)
        .map_err(|refused| anyhow::anyhow!("config {}: {refused}", args.config.display()))?;
    let status = gather(&config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print(&status);
    }
    Ok(if status.installed && status.generation > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_ENFORCING)
    })
}
