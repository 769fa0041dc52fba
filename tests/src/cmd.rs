//! Running host tools (`ip`) with errors that say what was run.

use std::process::Command;

/// Runs `program args...`, panicking with its stderr if it fails; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run `{program}`: {err} (is it installed?)"));
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `program args...` and reports whether it succeeded, for cleanup paths that must
/// not panic while a test is already unwinding.
pub fn run_quietly(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|output| output.status.success())
}
