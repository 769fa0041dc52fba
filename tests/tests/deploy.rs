//! The shipped systemd unit passes systemd's own checks with the real binary (the example
//! config's check is in the enforcer package's `config_cli` tests).

use std::{fs, path::Path, process::Command};

use enforcer_tests::{agent::enforcer_bin, require_root, unique_name};

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
}

/// `systemd-analyze verify UNIT`: whether systemd accepts it, and what it said.
fn verify(unit: &Path) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze is installed by ./x test (Debian package systemd)");
    let complaints = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    (output.status.success() && complaints.is_empty(), complaints)
}

#[test]
fn the_systemd_unit_and_the_protected_service_drop_in_verify_with_the_real_binary() {
    require_root();
    let real = |text: String| {
        text.replace(
            "/usr/local/bin/enforcer",
            &enforcer_bin().display().to_string(),
        )
    };
    let unit = fs::read_to_string(repository().join("deploy/enforcer.service")).expect("unit");
    let drop_in =
        fs::read_to_string(repository().join("deploy/protected-service.conf")).expect("drop-in");
    let dir = std::env::temp_dir().join(unique_name());
    let service = dir.join("enforcer-protected-test.service");
    fs::create_dir_all(dir.join("enforcer-protected-test.service.d")).expect("temp dir");
    fs::write(dir.join("enforcer.service"), real(unit)).expect("write unit");
    // A protected service with the drop-in, next to the agent's unit (systemd-analyze
    // reads units and drop-ins from the directory of the unit it verifies).
    fs::write(
        &service,
        "[Unit]\nDescription=a service the enforcer segments\n\n[Service]\nExecStart=/bin/true\n",
    )
    .expect("write service");
    fs::write(
        dir.join("enforcer-protected-test.service.d/enforcer.conf"),
        real(drop_in),
    )
    .expect("write drop-in");
    let agent = verify(&dir.join("enforcer.service"));
    let protected = verify(&service);
    let _ = fs::remove_dir_all(&dir);
    assert!(
        agent.0,
        "systemd-analyze verify enforcer.service: {}",
        agent.1
    );
    assert!(
        protected.0,
        "systemd-analyze verify with the drop-in: {}",
        protected.1
    );
}
