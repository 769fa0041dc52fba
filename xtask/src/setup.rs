//! Installs what the build and the tests need, idempotently: the pinned nightly with
//! rust-src, bpf-linker built against that nightly's own libLLVM, and Debian packages.
//!
//! Nothing half-installed is ever mistaken for done: bpf-linker is built into a staging
//! root and moved into place only once it runs and reports the pinned version.

use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::run::{Tools, status, stdout};

/// The nightly that builds the kernel crate (must match `enforcer/build.rs`).
pub const NIGHTLY: &str = "nightly-2026-10-30";
/// The bpf-linker release that links for LLVM 23.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The pinned nightly's libLLVM, which bpf-linker is built and run against.
const NIGHTLY_LLVM: &str = "libLLVM.so.23.1-rust-1.101.0-nightly";
/// Commands (or files) the tests use, and the Debian package that provides each.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("systemd-analyze", "systemd"),
    ("rsyslogd", "rsyslog"),
    (
        "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
        "rsyslog-gnutls",
    ),
    ("openssl", "openssl"),
];

/// Runs every setup step and returns the located tools.
pub fn run() -> anyhow::Result<Tools> {
    let tools = Tools::locate();
    install_nightly()?;
    install_bpf_linker(&tools)?;
    install_debian_packages()?;
    Ok(tools)
}

fn install_nightly() -> anyhow::Result<()> {
    status(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src,clippy",
    ]))
    .context("installing the pinned nightly for the eBPF crate; check that rustup reaches its distribution server")
}

fn installed_linker_version(tools: &Tools) -> Option<String> {
    stdout(Command::new(tools.bin().join("bpf-linker")).arg("--version"))
}

fn install_bpf_linker(tools: &Tools) -> anyhow::Result<()> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    link_nightly_llvm(tools)?;
    if installed_linker_version(tools).as_deref() == Some(wanted.as_str()) {
        eprintln!("setup: {wanted} already in {}", tools.bin().display());
        return Ok(());
    }
    let staging = tools.dir.join("staging");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the stale {}", staging.display()))?;
    }
    let llvm_prefix = tools.dir.join("rustc-llvm");
    status(
        tools
            .cargo(&[
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--root",
            ])
            .arg(&staging)
            .env("LLVM_PREFIX", &llvm_prefix),
    )
    .context("building bpf-linker against the nightly's libLLVM (needs the crates registry)")?;
    let built = staging.join("bin").join("bpf-linker");
    let version = stdout(Command::new(&built).arg("--version"));
    if version.as_deref() != Some(wanted.as_str()) {
        bail!(
            "the freshly built {} reports {version:?}, not {wanted}",
            built.display()
        );
    }
    fs::create_dir_all(tools.bin())?;
    fs::rename(&built, tools.bin().join("bpf-linker"))
        .with_context(|| format!("moving bpf-linker into {}", tools.bin().display()))?;
    fs::remove_dir_all(&staging)?;
    eprintln!("setup: installed {wanted} into {}", tools.bin().display());
    Ok(())
}

/// Points `<tools>/rustc-llvm/lib/{libLLVM.so, <versioned name>}` at the nightly's libLLVM.
/// bpf-linker's build finds LLVM there, and its RUNPATH keeps using it at run time.
fn link_nightly_llvm(tools: &Tools) -> anyhow::Result<()> {
    let sysroot = stdout(
        Command::new("rustc")
            .arg(format!("+{NIGHTLY}"))
            .args(["--print", "sysroot"]),
    )
    .with_context(|| format!("cannot ask {NIGHTLY} for its sysroot"))?;
    let target = Path::new(&sysroot).join("lib").join(NIGHTLY_LLVM);
    if !target.exists() {
        bail!(
            "{} is missing: the {NIGHTLY} install is incomplete; run `rustup toolchain uninstall {NIGHTLY}` and retry",
            target.display()
        );
    }
    let lib = tools.dir.join("rustc-llvm").join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", NIGHTLY_LLVM] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        let _ = fs::remove_file(&link);
        symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

fn install_debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(command, _)| {
            stdout(
                Command::new("sh")
                    .args(["-c", &format!("command -v {command} || test -e {command}")]),
            )
            .is_none()
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    status(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update (needs root and the Debian package mirror)")?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing Debian packages {}", missing.join(" ")))
}
