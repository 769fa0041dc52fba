//! Formatting and lints. The eBPF crate is linted on its own, for its own target, with
//! the nightly that builds it: its `#![no_std]` binary cannot share a clippy run with the
//! std crates.

use crate::{
    run::{Tools, status},
    setup::NIGHTLY,
};

/// Runs `cargo fmt --check` and both clippy runs with `-D warnings`.
pub fn run(tools: &Tools) -> anyhow::Result<()> {
    status(&mut tools.cargo(&["fmt", "--all", "--", "--check"]))?;
    status(&mut tools.cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "enforcer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let ebpf_target_dir = tools.root.join("target").join("ebpf-clippy");
    status(
        tools
            .cargo(&[
                &format!("+{NIGHTLY}"),
                "clippy",
                "--package",
                "enforcer-ebpf",
                "--bins",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
            ])
            .arg(&ebpf_target_dir)
            .args(["--", "-D", "warnings"]),
    )
}
