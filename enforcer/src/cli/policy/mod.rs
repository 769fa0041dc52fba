//! `enforcer policy ...`: the network admin's offline tools, one module per subcommand.

mod check;
mod diff;
mod explain;
mod local;
mod sign;
mod simulate;
mod verify;

use std::process::ExitCode;

use clap::Subcommand;

use crate::policy::{PolicyError, diagnostic::Diagnostic, source::SourceSet};

/// Policy subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policy files and summarise what they compile to (or show every error
    /// with file:line:col).
    Check(check::Args),
    /// Say what the policy decides for one flow, and why.
    Explain(explain::Args),
    /// Show every (from, to, port) whose verdict changes between two policies.
    Diff(diff::Args),
    /// Sign a policy into a bundle that agents with the public key will accept.
    Sign(sign::Args),
    /// Check a bundle's signature, content and version.
    Verify(verify::Args),
    /// Replay the flows of an audit store under a candidate policy: what would change
    /// verdict, grouped by segment pair and rule.
    Simulate(simulate::Args),
}

impl Command {
    /// Whether the command's exit code is its answer (`explain`: 0 passes, 1 denied;
    /// `diff`: 0 alike, 1 different), so an error must end it with [`EXIT_INVALID`].
    pub fn answers_with_its_exit_code(&self) -> bool {
        matches!(self, Self::Explain(_) | Self::Diff(_))
    }
}

/// Runs a policy subcommand.
pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check(args) => check::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Sign(args) => sign::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Simulate(args) => simulate::run(args),
    }
}

/// Exit code for a policy that does not compile (distinct from 1, "could not run"); for
/// `explain` and `diff`, which answer with 0 and 1, any trouble.
pub const EXIT_INVALID: u8 = 2;

/// `explain`'s exit code for a denied flow, `diff`'s for policies that differ.
pub const EXIT_DIFFERENT: u8 = 1;

/// Prints diagnostics to stderr in their terminal form.
pub fn print_diagnostics(sources: &SourceSet, diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        eprint!("{}", diagnostic.render(sources));
    }
}

/// Loads a policy for a tool that needs it compiled: on rejection prints the diagnostics
/// and returns the exit code to leave with.
pub fn load_or_report(
    paths: &[std::path::PathBuf],
) -> anyhow::Result<Result<crate::policy::Compiled, ExitCode>> {
    match crate::policy::load(paths) {
        Ok(compiled) => Ok(Ok(compiled)),
        Err(PolicyError::Rejected(rejected)) => {
            print_diagnostics(&rejected.sources, &rejected.diagnostics);
            let errors = rejected.diagnostics.iter().filter(|d| d.is_error()).count();
            eprintln!("policy rejected: {errors} error(s); nothing was compiled");
            Ok(Err(ExitCode::from(EXIT_INVALID)))
        }
        Err(err) => Err(err.into()),
    }
}
