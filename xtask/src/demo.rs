//! The README's first command. Until the demo enclave exists it builds everything, runs
//! the real agent's preflight (which loads every kernel program and attaches nothing) and
//! the real policy tools on the example enclave policy.

use crate::run::{Tools, status};

/// Builds the release binary, runs `enforcer preflight` and the policy tools.
pub fn run(tools: &Tools) -> anyhow::Result<()> {
    status(&mut tools.cargo(&["build", "--release", "--package", "enforcer"]))?;
    let enforcer = tools.root.join("target").join("release").join("enforcer");
    let enforcer = enforcer.to_string_lossy();
    let enclave = "policies/enclave";
    let steps: [&[&str]; 5] = [
        &["preflight"],
        &["policy", "check", enclave],
        &[
            "policy",
            "explain",
            enclave,
            "--from",
            "198.18.20.7",
            "--to",
            "payments",
            "--port",
            "8443/tcp",
        ],
        &[
            "policy",
            "explain",
            enclave,
            "--from",
            "system.slice/orders-api.service",
            "--to",
            "198.18.10.4",
            "--port",
            "9050/tcp",
        ],
        &[
            "policy",
            "explain",
            enclave,
            "--from",
            "198.18.77.1",
            "--to",
            "host",
            "--port",
            "8080/tcp",
        ],
    ];
    for args in steps {
        println!();
        status(tools.command(&enforcer).args(args))?;
    }
    println!();
    println!(
        "Not built yet: the demo enclave (namespaced hosts, cgroup services, a traffic matrix"
    );
    println!(
        "with expected and observed verdicts). Everything above is real output of the real binary;"
    );
    println!("the kernel programs loaded by preflight do not decide flows yet.");
    Ok(())
}
