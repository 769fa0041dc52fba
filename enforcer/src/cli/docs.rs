//! `enforcer completions SHELL` and `enforcer man`: shell completions and the man page,
//! generated from the same command definitions the parser uses, so they never drift.

use std::{
    io::{self, Write as _},
    process::ExitCode,
};

/// Arguments of `enforcer completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

/// Arguments of `enforcer man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {}

/// Prints the completion script of `command` (the whole command line) for a shell
/// (install it where the shell looks, for example
/// `/usr/share/bash-completion/completions/enforcer`).
pub fn completions(args: &CompletionArgs, mut command: clap::Command) -> anyhow::Result<ExitCode> {
    clap_complete::generate(args.shell, &mut command, "enforcer", &mut io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Prints the man page of `command` (the whole command line), enforcer(1), in roff
/// (`enforcer man > enforcer.1`), with a section per subcommand.
pub fn man(_args: &ManArgs, command: clap::Command) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    for sub in command.get_subcommands() {
        render_section(sub, "enforcer", &mut out)?;
    }
    out.write_all(EXIT_STATUS.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The man page's EXIT STATUS section.
const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
0
Success; for \fBpolicy explain\fR, the flow passes; for \fBpolicy diff\fR, the policies decide alike.
.TP
1
An error (named on standard error); \fBpolicy explain\fR: the flow is denied; \fBpolicy diff\fR: the policies differ; \fBaudit verify\fR: the store is not intact; \fBpreflight\fR: this host cannot run enforcer.
.TP
2
A policy that does not compile (every error with file:line:col); for \fBpolicy explain\fR and \fBpolicy diff\fR, any trouble.
.TP
3
\fBstatus\fR: nothing is enforced; \fBpolicy verify\fR: the bundle is refused.
"#;

/// The subcommand `command` of `parent` (and its own subcommands) as man page sections.
fn render_section(
    command: &clap::Command,
    parent: &str,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    let name = format!("{parent} {}", command.get_name());
    let named = command.clone().bin_name(name.clone());
    writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
    let man = clap_mangen::Man::new(named);
    if let Some(about) = command.get_long_about().or(command.get_about()) {
        writeln!(out, "{about}")?;
        writeln!(out, ".PP")?;
    }
    man.render_synopsis_section(out)?;
    man.render_options_section(out)?;
    for sub in command.get_subcommands() {
        render_section(sub, &name, out)?;
    }
    Ok(())
}
