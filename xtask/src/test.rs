//! Every test tier, in order, with one summary at the end.
//!
//! Tier 1 (host unit and property tests) runs unprivileged; tier 2 and 3 (kernel program
//! tests through `BPF_PROG_TEST_RUN`, and namespaces/cgroups/real processes) live in the
//! `enforcer-tests` package and need root. Last, every fuzz target runs for
//! [`fuzz::TEST_SECONDS_PER_TARGET`] from its corpus. Nothing is skipped: without root the
//! run fails, and an ignored test fails the run under `CI=true`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{
    check, fuzz, package,
    run::{Tools, describe},
};

/// The leftovers test, run alone after the other privileged tests.
const LEFTOVERS_TEST: &str = "nothing_made_by_the_tests_is_left_on_the_host";

/// Pass/fail/ignore counts summed over `cargo test` result lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Counts {
    /// Reads a libtest line such as
    /// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
    fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let (_, counts) = rest.split_once(". ")?;
        let mut parsed = Self::default();
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => parsed.passed = n,
                "failed" => parsed.failed = n,
                "ignored" => parsed.ignored = n,
                _ => {}
            }
        }
        Some(parsed)
    }

    fn add(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Runs a `cargo test` command, streaming its output, and returns the summed counts; a
/// failing command is reported after its counts are taken.
fn cargo_test(mut command: Command) -> anyhow::Result<(Counts, bool)> {
    eprintln!("+ {}", describe(&command));
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(&command)))?;
    let mut counts = Counts::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(found) = Counts::parse(&line) {
            counts.add(found);
        }
    }
    let ok = child.wait()?.success();
    Ok((counts, ok))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs checks and every tier; fails if anything failed, was skipped, or ran no test.
pub fn run(tools: &Tools) -> anyhow::Result<()> {
    check::run(tools)?;
    if !is_root() {
        bail!(
            "the privileged test tier needs root (network namespaces, cgroups, BPF); \
             run `sudo ./x test`. Nothing was skipped: the run stops here."
        );
    }
    let tiers: [(&str, Vec<&str>); 3] = [
        (
            "unit and property",
            vec![
                "test",
                "--workspace",
                "--exclude",
                "enforcer-ebpf",
                "--exclude",
                "enforcer-tests",
            ],
        ),
        (
            "privileged kernel",
            vec![
                "test",
                "--package",
                "enforcer-tests",
                "--",
                "--test-threads=1",
                "--skip",
                LEFTOVERS_TEST,
            ],
        ),
        (
            "leftovers",
            vec!["test", "--package", "enforcer-tests", "--test", "leftovers"],
        ),
    ];
    // The agent tests run the real `enforcer` binary, which only the enforcer package's
    // own tests would build.
    crate::run::status(&mut tools.cargo(&["build", "--package", "enforcer", "--bin", "enforcer"]))?;
    // tests/tests/package.rs installs and purges the .deb and reads the .rpm that
    // `./x package` leaves in target/package/ (a release build for musl: a few minutes).
    package::run(tools)?;
    // A run killed half-way (timeout, closed session) leaves its namespaces, cgroups,
    // pins and agents; remove them (loudly) so the leftovers tier judges this run only.
    crate::run::status(&mut tools.cargo(&[
        "run",
        "--quiet",
        "--package",
        "enforcer-tests",
        "--bin",
        "enforcer-test-sweep",
    ]))?;
    let mut total = Counts::default();
    let mut failed_tiers = Vec::new();
    for (name, args) in tiers {
        let (counts, ok) = cargo_test(tools.cargo(&args))?;
        eprintln!(
            "tier {name}: {} passed, {} failed, {} ignored",
            counts.passed, counts.failed, counts.ignored
        );
        if !ok || counts.passed == 0 {
            failed_tiers.push(name);
        }
        total.add(counts);
    }
    if let Err(err) = fuzz::run(tools, &[], fuzz::TEST_SECONDS_PER_TARGET) {
        eprintln!("tier fuzz: {err:#}");
        failed_tiers.push("fuzz");
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if ci && total.ignored > 0 {
        failed_tiers.push("(ignored tests under CI=true)");
    }
    println!(
        "{} passed, {} failed, {} skipped",
        total.passed, total.failed, total.ignored
    );
    if !failed_tiers.is_empty() {
        bail!("failed: {}", failed_tiers.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summary_lines() {
        let line = "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.46s";
        assert_eq!(
            Counts::parse(line),
            Some(Counts {
                passed: 3,
                failed: 2,
                ignored: 1
            })
        );
        assert_eq!(Counts::parse("running 3 tests"), None);
    }
}
