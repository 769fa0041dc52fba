//! `enforcer config check FILE`: check the agent's config file as `enforcer run` will,
//! without touching the kernel, and print the effective settings (defaults filled in).

use std::{path::PathBuf, process::ExitCode};

use crate::{
    audit::{forward::Collector, store::Fsync},
    config::{Config, Interfaces, WriteErrorAction, XdpMode},
};

/// `enforcer config` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check a config file: every problem with its field and file:line:col, or the
    /// effective settings.
    Check(CheckArgs),
}

/// Arguments of `enforcer config check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The config file.
    #[arg(default_value = "/etc/enforcer/enforcer.toml")]
    path: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a config subcommand.
pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    let Command::Check(args) = command;
    match Config::load(&args.path) {
        Ok(config) => {
            if args.json {
                let report = serde_json::json!({ "ok": true, "config": config });
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{} is valid; effective settings:", args.path.display());
                print_settings(&config);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(refused) => {
            if args.json {
                let report = serde_json::json!({ "ok": false, "problems": refused.problems });
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for problem in &refused.problems {
                    eprintln!("error: {problem}");
                }
                eprintln!("config refused: {} problem(s)", refused.problems.len());
            }
            // As `policy check` and `run` say an invalid input.
            Ok(ExitCode::from(2))
        }
    }
}

fn print_settings(config: &Config) {
    let mode = |mode: XdpMode| match mode {
        XdpMode::Auto => "auto",
        XdpMode::Native => "native",
        XdpMode::Skb => "skb",
    };
    let interfaces = match &config.interfaces {
        Interfaces::All { exclude, xdp_mode } if exclude.is_empty() => format!(
            "all but loopback, also those that appear later ({})",
            mode(*xdp_mode)
        ),
        Interfaces::All { exclude, xdp_mode } => format!(
            "all but loopback and {}, also those that appear later ({})",
            exclude.join(", "),
            mode(*xdp_mode)
        ),
        Interfaces::Listed(list) if list.is_empty() => {
            "none (outbound enforcement only)".to_owned()
        }
        Interfaces::Listed(list) => list
            .iter()
            .map(|i| format!("{} ({})", i.name, mode(i.xdp_mode)))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let cgroup = if config.cgroup.is_empty() {
        "the cgroup2 root (every process)".to_owned()
    } else {
        config.cgroup.clone()
    };
    let keys = if config.policy.trusted_keys.is_empty() {
        "none: plain policy files are applied".to_owned()
    } else {
        config
            .policy
            .trusted_keys
            .iter()
            .map(|k| k.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut settings = vec![
        ("interfaces", interfaces),
        ("cgroup", cgroup),
        ("policy.path", config.policy.path.display().to_string()),
        ("policy.trusted_keys", keys),
        ("pin_dir", config.pin_dir.display().to_string()),
        ("state_dir", config.state_dir.display().to_string()),
        ("data_dir", config.data_dir.display().to_string()),
        ("audit.dir", config.audit.dir.display().to_string()),
        (
            "audit.dedup_window_ms",
            config.audit.dedup_window.as_millis().to_string(),
        ),
        ("audit.fold_sources", config.audit.fold_sources.to_string()),
        (
            "audit.rotate",
            format!(
                "at {} MiB or {} minutes",
                config.audit.rotate_bytes >> 20,
                config.audit.rotate_age.as_secs() / 60
            ),
        ),
        (
            "audit.retain",
            format!(
                "{} MiB, {} days",
                config.audit.retain_bytes >> 20,
                config.audit.retain_age.as_secs() / 86_400
            ),
        ),
        (
            "audit.fsync",
            match config.audit.fsync {
                Fsync::Batch => "after every batch".to_owned(),
                Fsync::Interval(every) => format!("every {} ms", every.as_millis()),
                Fsync::Never => "never".to_owned(),
            },
        ),
        (
            "audit.on_write_error",
            match config.audit.on_write_error {
                WriteErrorAction::KeepEnforcing => "keep-enforcing",
                WriteErrorAction::FailClosed => "fail-closed",
            }
            .to_owned(),
        ),
    ];
    settings.extend(forward_settings(config));
    settings.push(("metrics.listen", config.metrics_listen.to_string()));
    for (name, value) in settings {
        println!("  {name:<22} {value}");
    }
}

/// The `[audit.forward]` lines: the collector, the framing, and TLS with its files.
fn forward_settings(config: &Config) -> Vec<(&'static str, String)> {
    let Some(forward) = &config.audit.forward else {
        return vec![("audit.forward", "(none)".to_owned())];
    };
    let address = match &forward.address {
        Collector::Address(address) => address.to_string(),
        Collector::Name { .. } => {
            format!("{} (resolved at every connection attempt)", forward.address)
        }
    };
    let tls = forward.tls.as_ref().map_or_else(
        || "no (plain TCP)".to_owned(),
        |tls| {
            let client = tls.client_certificate.as_ref().map_or_else(
                || "no client certificate".to_owned(),
                |client| {
                    format!(
                        "client certificate {} with key {}",
                        client.cert_file.display(),
                        client.key_file.display()
                    )
                },
            );
            format!(
                "CA {}, collector name {}, {client}",
                tls.ca_file.display(),
                tls.server_name
            )
        },
    );
    vec![
        ("audit.forward.address", address),
        ("audit.forward.framing", forward.framing.word().to_owned()),
        ("audit.forward.tls", tls),
    ]
}
