//! The README's first command: builds the agent and the demo driver in release mode and
//! runs the demo enclave (`tests/src/bin/enforcer-demo/`) with `policies/demo/`.

use std::path::Path;

use anyhow::bail;

use crate::run::{Tools, release_bin};

/// Builds the binaries and runs the demo (keeping a copy of its audit store in `keep`);
/// fails when the demo reports a mismatch or could not clean up.
pub fn run(tools: &Tools, keep: Option<&Path>) -> anyhow::Result<()> {
    release_bin(tools, "enforcer", "enforcer")?;
    release_bin(tools, "enforcer-tests", "enforcer-probe")?;
    let demo = release_bin(tools, "enforcer-tests", "enforcer-demo")?;
    let mut command = tools.command(&demo.to_string_lossy());
    if let Some(dir) = keep {
        // The demo runs elsewhere than the caller's directory may be: an absolute path.
        command.arg("--keep").arg(std::path::absolute(dir)?);
    }
    let status = command
        .arg(tools.root.join("policies").join("demo"))
        .status()?;
    if !status.success() {
        bail!("the demo failed ({status}); its output above says where");
    }
    Ok(())
}
