//! The shipped systemd unit passes systemd's own checks with the real binary (the example
//! config's check is in the enforcer package's `config_cli` tests).

use std::{fs, path::Path, process::Command};

use enforcer_tests::{agent::enforcer_bin, require_root, unique_name};

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
}

#[test]
fn the_systemd_unit_verifies_with_the_real_binary() {
    require_root();
    let unit = fs::read_to_string(repository().join("deploy/enforcer.service")).expect("unit");
    let bin = enforcer_bin();
    let dir = std::env::temp_dir().join(unique_name());
    fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("enforcer.service");
    fs::write(
        &path,
        unit.replace("/usr/local/bin/enforcer", &bin.display().to_string()),
    )
    .expect("write unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed by ./x test (Debian package systemd)");
    let _ = fs::remove_dir_all(&dir);
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
}
