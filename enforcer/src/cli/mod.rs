//! The `enforcer` command line: one module per subcommand, and the helpers they share
//! ([`table`], [`time`]).

mod audit;
mod config;
mod docs;
mod keygen;
mod logging;
mod policy;
mod preflight;
mod run;
mod status;
pub mod table;
pub mod time;
mod uninstall;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

/// Kernel-level API segmentation for air-gapped enclaves.
#[derive(Debug, Parser)]
#[command(name = "enforcer", version, about, max_term_width = 100)]
struct Cli {
    /// The log's format on standard error: text, or one JSON object per line. Under
    /// systemd each line carries its journald priority.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that this host can run enforcer: the kernel floor and features (each with
    /// what a missing one costs), then every kernel program through the verifier,
    /// attaching nothing.
    Preflight(preflight::Args),
    /// Policy tools: check, explain, diff, sign, verify, simulate.
    #[command(subcommand)]
    Policy(policy::Command),
    /// Create an ed25519 key pair for signing policy bundles.
    Keygen(keygen::Args),
    /// The agent's config file: check it before deploying.
    #[command(subcommand)]
    Config(config::Command),
    /// Run the agent in the foreground: enforce the configured policy, reload it on
    /// SIGHUP and on file changes, serve /metrics. Stopping leaves enforcement in place.
    Run(run::Args),
    /// What is enforced: policy generation, attachments, map fill, counters, the last
    /// reload. Works while the agent is down.
    Status(status::Args),
    /// The flow audit store: tail, query, verify, stats.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Remove every program, link, map and pin the agent made (the agent must be
    /// stopped). The audit store stays.
    Uninstall(uninstall::Args),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(docs::CompletionArgs),
    /// Print the man page, enforcer(1), in roff.
    Man(docs::ManArgs),
}

/// Parses the command line, runs the subcommand and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    if !matches!(cli.command, Command::Run(_)) {
        // A one-shot command piped into `head` ends quietly, as shell tools do. The agent
        // keeps ignoring SIGPIPE: a metrics client hanging up must not stop it.
        // SAFETY: setting a signal disposition to the default has no preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // `explain` and `diff` answer with 0 and 1: trouble is 2 for them, as for diff(1).
    let trouble = match &cli.command {
        Command::Policy(command) if command.answers_with_its_exit_code() => {
            ExitCode::from(policy::EXIT_INVALID)
        }
        _ => ExitCode::FAILURE,
    };
    let outcome = match cli.command {
        Command::Preflight(args) => preflight::run(&args),
        Command::Policy(command) => policy::run(&command),
        Command::Keygen(args) => keygen::run(&args),
        Command::Config(command) => config::run(&command),
        Command::Run(args) => run::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Audit(command) => audit::run(&command),
        Command::Uninstall(args) => uninstall::run(&args),
        Command::Completions(args) => docs::completions(&args, Cli::command()),
        Command::Man(args) => docs::man(&args, Cli::command()),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            trouble
        }
    }
}

/// The error and its causes, `: `-separated; a cause the text before already says (an
/// error that shows its source in its own message) is not said again.
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "File exists");
        let shown_in_message = anyhow::Error::new(crate::policy::bundle::BundleError::Io {
            path: "/tmp/key".into(),
            source: io,
        });
        assert_eq!(describe(&shown_in_message), "/tmp/key: File exists");
        let context = anyhow::anyhow!("disk full").context("writing HEAD");
        assert_eq!(describe(&context), "writing HEAD: disk full");
    }
}
