//! `./x mutants`: mutation testing with cargo-mutants over the areas `.cargo/mutants.toml`
//! names (the policy compiler, the audit store, the shared decision code), then the score.
//!
//! Every mutant is a rebuild of the enforcer crate and a run of its tests: about 40 s here,
//! so all of them take most of a day on two cores. `--shard K/N` runs every N-th mutant
//! (round robin, so the sample spreads over every file) for a score in an hour or two; the
//! N shards together are the whole run.

use std::{fs, path::Path};

use anyhow::{Context as _, bail};

use crate::{
    run::Tools,
    setup::{CargoTool, install_cargo_tool},
};

/// The cargo-mutants release `./x mutants` runs.
const CARGO_MUTANTS: CargoTool = CargoTool {
    krate: "cargo-mutants",
    version: "27.1.0",
    binary: "cargo-mutants",
    version_args: &["mutants", "--version"],
};

/// Where the results go (`<dir>/mutants.out/`), under the repository root.
const OUTPUT_DIR: &str = "target/mutants";

/// The share of viable mutants the tests must catch (issue #22).
const TARGET_SCORE: f64 = 0.90;

/// The totals cargo-mutants writes to `mutants.out/outcomes.json`.
#[derive(Debug)]
struct Totals {
    total_mutants: usize,
    caught: usize,
    missed: usize,
    timeout: usize,
    unviable: usize,
}

impl Totals {
    /// The totals in `outcomes.json`.
    fn parse(json: &str) -> anyhow::Result<Self> {
        let value: serde_json::Value = serde_json::from_str(json)?;
        let count = |field: &str| {
            value[field]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .with_context(|| format!("no count `{field}`"))
        };
        Ok(Self {
            total_mutants: count("total_mutants")?,
            caught: count("caught")?,
            missed: count("missed")?,
            timeout: count("timeout")?,
            unviable: count("unviable")?,
        })
    }

    /// Caught (a test failed, or the tests hung) over the mutants that built.
    fn score(&self) -> Option<f64> {
        let viable = self.caught + self.missed + self.timeout;
        (viable > 0).then(|| (self.caught + self.timeout) as f64 / viable as f64)
    }
}

/// Runs cargo-mutants (every mutant, or the shard `K/N`), prints the score and the
/// mutants no test caught; fails when the score is under the target.
pub fn run(tools: &Tools, shard: Option<&str>) -> anyhow::Result<()> {
    install_cargo_tool(tools, &CARGO_MUTANTS)?;
    let mut command = tools.cargo(&["mutants", "--output", OUTPUT_DIR, "--no-shuffle"]);
    if let Some(shard) = shard {
        command.args(["--shard", shard, "--sharding", "round-robin"]);
    }
    // Each mutant builds in cargo-mutants' own copy of the tree, never in ours.
    command.env_remove("CARGO_TARGET_DIR");
    eprintln!("mutants: {}", crate::run::describe(&command));
    // cargo-mutants exits 2 when a mutant is missed and 3 on a timeout: the totals say
    // which, so only a run that wrote none is an error here.
    let exit = command.status().context("running cargo mutants")?;
    let out = tools.root.join(OUTPUT_DIR).join("mutants.out");
    let totals = Totals::parse(
        &fs::read_to_string(out.join("outcomes.json"))
            .with_context(|| format!("cargo mutants ({exit}) wrote no outcomes"))?,
    )
    .context("reading outcomes.json")?;
    report(&totals, &out, shard)
}

/// Prints the totals, the score and each missed mutant.
fn report(totals: &Totals, out: &Path, shard: Option<&str>) -> anyhow::Result<()> {
    let missed = fs::read_to_string(out.join("missed.txt")).unwrap_or_default();
    for line in missed.lines() {
        println!("missed: {line}");
    }
    let Some(score) = totals.score() else {
        bail!("no mutant built; see {}", out.display());
    };
    println!(
        "mutants{}: {} in all, {} caught, {} timed out (caught), {} missed, {} unviable (did not build): score {:.1} % of {} viable (target {:.0} %)",
        shard.map_or_else(String::new, |s| format!(" (shard {s})")),
        totals.total_mutants,
        totals.caught,
        totals.timeout,
        totals.missed,
        totals.unviable,
        score * 100.0,
        totals.caught + totals.missed + totals.timeout,
        TARGET_SCORE * 100.0
    );
    if score < TARGET_SCORE {
        bail!(
            "the tests caught {:.1} % of the viable mutants, under the {:.0} % target; the missed ones are listed above and in {}",
            score * 100.0,
            TARGET_SCORE * 100.0,
            out.join("missed.txt").display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_totals_are_read_from_outcomes_json() {
        let totals = Totals::parse(
            r#"{"outcomes": [], "total_mutants": 5, "missed": 1, "caught": 2, "timeout": 0, "unviable": 2, "success": 0}"#,
        )
        .expect("parse");
        assert_eq!(
            (totals.total_mutants, totals.caught, totals.missed),
            (5, 2, 1)
        );
        assert_eq!(totals.unviable, 2);
        assert!(Totals::parse(r#"{"caught": 2}"#).is_err());
    }

    #[test]
    fn timeouts_count_as_caught_and_unviable_mutants_do_not_count() {
        let totals = Totals {
            total_mutants: 20,
            caught: 7,
            missed: 1,
            timeout: 2,
            unviable: 10,
        };
        assert_eq!(totals.score(), Some(0.9));
        let none_built = Totals {
            total_mutants: 3,
            caught: 0,
            missed: 0,
            timeout: 0,
            unviable: 3,
        };
        assert_eq!(none_built.score(), None);
    }
}
