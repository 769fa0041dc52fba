//! The `enforcer` command.

fn main() -> std::process::ExitCode {
    enforcer::cli::main()
}
