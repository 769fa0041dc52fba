//! Running commands with the project's tools on PATH, and errors that name the command.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Where the project keeps what it installs, and how to put it on PATH.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The repository root.
    pub root: PathBuf,
    /// `<root>/.tools` (or `$ENFORCER_TOOLS`): bpf-linker and its libLLVM links.
    pub dir: PathBuf,
}

impl Tools {
    /// The tools directory for the repository this xtask was built from.
    pub fn locate() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives one level below the repository root")
            .to_owned();
        let dir =
            std::env::var_os("ENFORCER_TOOLS").map_or_else(|| root.join(".tools"), PathBuf::from);
        Self { root, dir }
    }

    /// `<tools>/bin`, where bpf-linker lives.
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// PATH with `<tools>/bin` first.
    pub fn path_env(&self) -> OsString {
        let mut paths = vec![self.bin()];
        if let Some(path) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&path));
        }
        std::env::join_paths(paths).expect("PATH entries contain no separator")
    }

    /// A command run from the repository root with the tools on PATH.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.current_dir(&self.root).env("PATH", self.path_env());
        command
    }

    /// `cargo` with the tools on PATH.
    pub fn cargo(&self, args: &[&str]) -> Command {
        let mut command = self.command("cargo");
        command.args(args);
        command
    }
}

/// Builds binary `bin` of `package` in release mode; returns its path.
pub fn release_bin(tools: &Tools, package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    status(&mut tools.cargo(&["build", "--release", "--package", package, "--bin", bin]))?;
    Ok(tools.root.join("target/release").join(bin))
}

/// Runs `command`, echoing it first, and fails with its exit status if it fails.
pub fn status(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("cannot run `{}`", describe(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(command));
    }
    Ok(())
}

/// Runs `command` quietly and returns its trimmed stdout, or `None` if it could not run
/// or failed.
pub fn stdout(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `program arg arg ...` for messages.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
