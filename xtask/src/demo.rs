//! The README's first command. Until the demo enclave exists it builds everything and
//! runs the real agent's preflight, which loads every kernel program and attaches nothing.

use crate::run::{Tools, status};

/// Builds the release binary and runs `enforcer preflight` on this host.
pub fn run(tools: &Tools) -> anyhow::Result<()> {
    status(&mut tools.cargo(&["build", "--release", "--package", "enforcer"]))?;
    let enforcer = tools.root.join("target").join("release").join("enforcer");
    status(tools.command(&enforcer.to_string_lossy()).arg("preflight"))?;
    println!();
    println!(
        "The demo enclave (namespaced hosts, cgroup services, a traffic matrix) is not built yet."
    );
    println!("What ran above is the real agent binary loading its kernel programs on this host.");
    Ok(())
}
