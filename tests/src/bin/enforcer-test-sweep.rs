//! Removes what interrupted test runs and demos left on this host, so a run killed
//! half-way (by a timeout, a closed session or a power cut) does not fail the next one's
//! leftovers check. `./x test` runs it before the privileged tier; it prints every object
//! it removes.

use std::process::ExitCode;

use enforcer_tests::{
    leftovers::{DEMO, TESTS, find, sweep},
    require_root,
};

fn main() -> ExitCode {
    require_root();
    let swept: Vec<_> = sweep(TESTS).into_iter().chain(sweep(DEMO)).collect();
    if swept.is_empty() {
        println!("no leftovers of earlier test runs on this host");
    } else {
        println!("removed what interrupted earlier test runs left:");
        for leftover in &swept {
            println!("  {leftover}");
        }
    }
    let left: Vec<_> = find(TESTS).into_iter().chain(find(DEMO)).collect();
    if left.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("enforcer-test-sweep: still on the host after the sweep:");
    for leftover in &left {
        eprintln!("  {leftover}");
    }
    ExitCode::FAILURE
}
