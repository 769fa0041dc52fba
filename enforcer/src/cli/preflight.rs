//! `enforcer preflight`: can this host run enforcer, and what does it lose on this kernel?
//! States the kernel floor, checks each kernel feature enforcer needs or would use (with
//! what a missing one costs), then loads every program through this kernel's verifier.
//! Attaches nothing and leaves nothing behind: the programs unload on exit.

use std::{path::Path, process::ExitCode};

use aya::{maps::MapType, sys::is_map_supported};
use serde::Serialize;

use crate::{host, loader::Loader};

/// The oldest kernel the programs load on: `bpf_skc_to_mptcp_sock`, the newest helper
/// they call, came in 5.19 (ring buffers in 5.8, cgroup BPF links in 5.7).
pub const KERNEL_FLOOR: (u32, u32) = (5, 19);

/// Exit code when this host cannot run enforcer.
const EXIT_UNFIT: u8 = 1;

/// Arguments of `enforcer preflight`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One kernel feature and where this host stands.
#[derive(Debug, Serialize)]
struct Feature {
    /// What it is.
    name: &'static str,
    /// Whether enforcer cannot run without it.
    required: bool,
    /// `true` present, `false` missing, `null` unknown.
    present: Option<bool>,
    /// What was found.
    found: String,
    /// What the user loses without it.
    without: &'static str,
}

/// A program as the verifier took it.
#[derive(Debug, Serialize)]
struct Program {
    name: &'static str,
    id: u32,
    verified_instructions: Option<u32>,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    kernel_floor: String,
    features: Vec<Feature>,
    programs: Vec<Program>,
    /// Why the programs did not load, when they did not.
    load_error: Option<String>,
    /// Whether this host can run enforcer.
    fit: bool,
}

/// The kernel release's major and minor version.
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn features(release: &str) -> Vec<Feature> {
    let floor = format!("{}.{}", KERNEL_FLOOR.0, KERNEL_FLOOR.1);
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").ok();
    let bpf_lsm = lsms
        .as_deref()
        .map(|list| list.trim().split(',').any(|lsm| lsm == "bpf"));
    let bpf_lsm_found = lsms.map_or_else(
        || "unknown: securityfs is not mounted at /sys/kernel/security".to_owned(),
        |list| format!("active LSMs: {}", list.trim()),
    );
    let cgroup2 = host::cgroup2_mount();
    let bpffs = host::is_bpffs(Path::new(host::DEFAULT_BPFFS));
    // Made and closed again by the probe: a ring buffer map of one page.
    let ring_buffer = is_map_supported(MapType::RingBuf);
    vec![
        Feature {
            name: "kernel version",
            required: true,
            present: Some(version(release).is_some_and(|v| v >= KERNEL_FLOOR)),
            found: format!("{release} (floor {floor})"),
            without: "the programs do not load",
        },
        Feature {
            name: "BTF (/sys/kernel/btf/vmlinux)",
            required: true,
            present: Some(Path::new("/sys/kernel/btf/vmlinux").exists()),
            found: "CONFIG_DEBUG_INFO_BTF".to_owned(),
            without: "the programs do not load: MPTCP subflows are recognised through a BTF-typed helper",
        },
        Feature {
            name: "cgroup v2",
            required: true,
            present: Some(cgroup2.is_ok()),
            found: cgroup2
                .map_or_else(|e| e.to_string(), |p| format!("mounted at {}", p.display())),
            without: "no per-process enforcement: the cgroup hooks attach to a cgroup v2 directory",
        },
        Feature {
            name: "BPF ring buffer (5.8)",
            required: true,
            present: ring_buffer.as_ref().ok().copied(),
            found: match &ring_buffer {
                Ok(true) => "a ring buffer map was created".to_owned(),
                Ok(false) => "the kernel refuses BPF_MAP_TYPE_RINGBUF".to_owned(),
                Err(err) => format!("cannot probe: {err}"),
            },
            without: "the programs do not load: every audit event reaches the agent through it",
        },
        Feature {
            name: "bpffs",
            required: false,
            present: bpffs.as_ref().ok().copied(),
            found: match bpffs {
                Ok(true) => format!("mounted at {}", host::DEFAULT_BPFFS),
                Ok(false) => format!(
                    "not mounted at {} (the agent mounts it)",
                    host::DEFAULT_BPFFS
                ),
                Err(err) => err.to_string(),
            },
            without: "nothing: the agent mounts it; without pins enforcement would end with the agent",
        },
        Feature {
            name: "BPF LSM",
            required: false,
            present: bpf_lsm,
            found: bpf_lsm_found,
            without: "nothing in this version, which attaches no LSM program: the gaps it would close (packet sockets, io_uring, the 32-bit setsockopt) stay open as docs/threat-model.md says",
        },
        Feature {
            name: "lsm_cgroup (BPF LSM per cgroup, 6.0)",
            required: false,
            present: bpf_lsm.map(|on| on && version(release).is_some_and(|v| v >= (6, 0))),
            found: "needs BPF LSM and Linux 6.0".to_owned(),
            without: "as BPF LSM: not used by this version",
        },
    ]
}

/// Checks the host and loads every program; exits 1 when a required feature is missing
/// or a program does not load.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |r| r.trim().to_owned());
    let features = features(&release);
    let (programs, load_error) = match Loader::load().and_then(|loader| loader.programs()) {
        Ok(programs) => (
            programs
                .into_iter()
                .map(|p| Program {
                    name: p.hook.program_name(),
                    id: p.id,
                    verified_instructions: p.verified_instructions,
                })
                .collect(),
            None,
        ),
        Err(err) => (Vec::new(), Some(format!("{err:#}"))),
    };
    let fit = load_error.is_none()
        && features
            .iter()
            .all(|f| !f.required || f.present == Some(true));
    let report = Report {
        kernel: release,
        kernel_floor: format!("{}.{}", KERNEL_FLOOR.0, KERNEL_FLOOR.1),
        features,
        programs,
        load_error,
        fit,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(if report.fit {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNFIT)
    })
}

fn print(report: &Report) {
    println!(
        "kernel {} (enforcer needs {} or later)",
        report.kernel, report.kernel_floor
    );
    for feature in &report.features {
        let state = match feature.present {
            Some(true) => "yes",
            Some(false) if feature.required => "MISSING",
            Some(false) => "no",
            None => "unknown",
        };
        println!("{:<38} {state:<8} {}", feature.name, feature.found);
        if feature.present != Some(true) {
            println!("{:<38} without it: {}", "", feature.without);
        }
    }
    match &report.load_error {
        Some(err) => println!("programs: NOT LOADED: {err}"),
        None => {
            println!("{:<12} {:>8} {:>14}", "program", "id", "verified insns");
            for program in &report.programs {
                let verified = program
                    .verified_instructions
                    .map_or_else(|| "-".to_owned(), |n| n.to_string());
                println!("{:<12} {:>8} {verified:>14}", program.name, program.id);
            }
        }
    }
    if report.fit {
        println!("preflight ok: every program passed the verifier on this kernel");
    } else {
        println!("preflight FAILED: enforcer cannot run on this host as it is");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_with_the_floor() {
        assert_eq!(version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(version("5.19.0"), Some((5, 19)));
        assert!(version("5.15.0-91-generic").is_some_and(|v| v < KERNEL_FLOOR));
        assert_eq!(version("garbage"), None);
    }
}
