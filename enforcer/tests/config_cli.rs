//! `enforcer config check` as an infrastructure team runs it before deploying: the shipped
//! example config is valid, and a broken one is refused naming each field and its line.

use std::{path::Path, process::Command};

fn config_check(path: &Path, json: bool) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_enforcer"));
    command.args(["config", "check"]).arg(path);
    if json {
        command.arg("--json");
    }
    command.output().expect("run enforcer")
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/enforcer.toml");
    let out = config_check(&example, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["ok"], true);
    assert_eq!(report["config"]["pin_dir"], "/sys/fs/bpf/enforcer");
    assert_eq!(report["config"]["metrics_listen"], "127.0.0.1:9464");
    assert_eq!(report["config"]["audit"]["dedup_window_ms"], 1000);
}

#[test]
fn a_broken_config_is_refused_naming_fields_and_lines() {
    let dir = std::env::temp_dir().join(format!("enforcer-test-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("enforcer.toml");
    std::fs::write(
        &path,
        "pin_dir = \"pins\"\n\n[policy]\npath = \"/etc/enforcer/policy\"\n\n[metrics]\nlisten = \"everywhere\"\n",
    )
    .expect("write config");
    let out = config_check(&path, false);
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display();
    assert!(
        stderr.contains(&format!("{file}:1:11: `pin_dir`: must be an absolute path")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:7:10: `metrics.listen`: `everywhere` is not an address:port"
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn config_check_shows_where_and_how_records_are_forwarded() {
    let dir = std::env::temp_dir().join(format!("enforcer-test-fwd-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("enforcer.toml");
    std::fs::write(
        &path,
        "[policy]\npath = \"/etc/enforcer/policy\"\n\n[audit.forward]\naddress = \"collector.example:6514\"\nframing = \"newline\"\n",
    )
    .expect("write config");
    let text = config_check(&path, false);
    let json = config_check(&path, true);
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let stdout = String::from_utf8_lossy(&text.stdout);
    for line in [
        "audit.forward.address  collector.example:6514 (resolved at every connection attempt)",
        "audit.forward.framing  newline",
        "audit.forward.tls      no (plain TCP)",
    ] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let forward = &report["config"]["audit"]["forward"];
    assert_eq!(forward["address"], "collector.example:6514");
    assert_eq!(forward["framing"], "newline");
    assert_eq!(forward["tls"], serde_json::Value::Null);
}
